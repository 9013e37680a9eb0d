"""The simulator's aiohttp app: vLLM's OpenAI-compatible routes, health, metrics, version.

`create_sim_app(config)` is the factory tests and the local deployer use; `run_sim` serves it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from gateway.errors import FleetgateError, ServiceUnavailable
from opsctl.sim.config import SimConfig
from opsctl.sim.engine import SimEngine
from opsctl.sim.faults import Fault
from opsctl.sim.protocol import (
    Generation,
    parse_chat,
    parse_completion,
    parse_embedding,
    read_body,
)
from opsctl.sim.responses import (
    ChunkFormat,
    chat_body,
    completion_body,
    embedding_body,
    models_body,
)

SIM_ENGINE = web.AppKey("sim_engine", SimEngine)
SIM_VLLM_VERSION = "0.11.0+fleetgate.sim"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_BODY_BYTES = 64 * 1024 * 1024  # vLLM has no small body limit; long prompts must fit

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(error: FleetgateError) -> web.Response:
    """An OpenAI-shaped error body with the error's status."""
    return web.Response(
        body=orjson.dumps(error.to_dict()), status=error.status, content_type="application/json",
        headers=error.headers,
    )


def _json(data: object) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


async def _answer(handler: Handler, request: web.Request) -> web.StreamResponse:
    try:
        return await handler(request)
    except FleetgateError as e:
        return error_response(e)


@web.middleware
async def _engine_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """503 while starting or dead (metrics still answer); counts requests toward crash-after."""
    engine = request.app[SIM_ENGINE]
    if request.path != "/metrics":
        reason = engine.faults.unavailable()
        if reason is not None:
            return error_response(ServiceUnavailable(reason, code="engine_unavailable"))
    if request.method != "POST":
        return await handler(request)
    if not engine.faults.count_request():
        return await _answer(handler, request)
    try:  # the last request before the crash: make sure its answer is out first
        response = await _answer(handler, request)
        await response.prepare(request)
        await response.write_eof()
        return response
    finally:
        engine.crash()


async def _inject(engine: SimEngine, request: web.Request, *, stream: bool) -> web.StreamResponse | None:
    """Apply this request's fault: raise, hang, or return the bad answer to send (None: answer normally)."""
    fault = engine.faults.draw()
    if fault is Fault.ERROR:
        raise FleetgateError("simulated engine failure", code="internal_error")
    if fault is Fault.HANG:
        await engine.hang(request)
    if fault is Fault.GARBAGE:
        return await engine.garbage(request, stream=stream)
    if engine.config.hang_after_headers:
        if stream:
            return await engine.hang_after_headers(request)
        await engine.hang(request)
    return None


async def _generate(request: web.Request, gen: Generation, *, chat: bool) -> web.StreamResponse:
    engine = request.app[SIM_ENGINE]
    injected = await _inject(engine, request, stream=gen.stream)
    if injected is not None:
        return injected
    config = engine.config
    model = config.served_names[0]  # vLLM names its answers after the first served name
    request_id = engine.request_id("chatcmpl" if chat else "cmpl")
    created = int(time.time())
    if gen.stream:
        fmt = ChunkFormat(request_id, created, model, chat=chat, lie=config.usage_lie)
        return await engine.stream(request, gen, fmt)
    texts = await engine.complete(gen)
    build = chat_body if chat else completion_body
    return _json(build(request_id, created, model, texts, gen, config.usage_lie))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    engine = request.app[SIM_ENGINE]
    gen = parse_chat(read_body(await request.read()), engine.config)
    return await _generate(request, gen, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    engine = request.app[SIM_ENGINE]
    gen = parse_completion(read_body(await request.read()), engine.config)
    return await _generate(request, gen, chat=False)


async def embeddings(request: web.Request) -> web.StreamResponse:
    engine = request.app[SIM_ENGINE]
    job = parse_embedding(read_body(await request.read()), engine.config)
    injected = await _inject(engine, request, stream=False)
    if injected is not None:
        return injected
    config = engine.config
    started = asyncio.get_running_loop().time()
    body = embedding_body(engine.request_id("embd"), int(time.time()), config.served_names[0], job,
                          config.embedding_dim)
    response = _json(body)
    engine.metrics.finished("stop", job.prompt_tokens, 0, asyncio.get_running_loop().time() - started)
    return response


async def models(request: web.Request) -> web.Response:
    engine = request.app[SIM_ENGINE]
    config = engine.config
    return _json(models_body(config.served_names, config.model, engine.created, config.max_model_len))


async def health(request: web.Request) -> web.Response:
    return web.Response()  # the guard already answered 503 while starting or dead


async def version(request: web.Request) -> web.Response:
    return _json({"version": SIM_VLLM_VERSION})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[SIM_ENGINE].metrics.render().encode()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def _on_startup(app: web.Application) -> None:
    app[SIM_ENGINE].faults.start(asyncio.get_running_loop())


async def _on_shutdown(app: web.Application) -> None:
    engine = app[SIM_ENGINE]
    engine.faults.stop()
    engine.stopping()


def create_sim_app(config: SimConfig, *, on_crash: Callable[[], None] | None = None) -> web.Application:
    """Build the simulator app for one model.

    Args:
        config: how the simulated pod behaves (latency, faults, limits).
        on_crash: called once the crash-after-N request is answered (`run_sim` exits the
            process); without it the app stays up as a dead engine answering 503.
    """
    app = web.Application(middlewares=[_engine_guard], client_max_size=MAX_BODY_BYTES)
    app[SIM_ENGINE] = SimEngine(config, on_crash=on_crash)
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/version", version)
    app.router.add_get("/metrics", metrics)
    return app
