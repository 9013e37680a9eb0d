"""The load generator against a real in-test aiohttp server with injected latency and faults.

The server runs in its own thread and event loop, so client and server do not share a loop.
The model name carries the behaviour: "name|lat=0.02|ttft=0.03|fail=500:2|serial".
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import Counter

import orjson
import pytest
import typer
from aiohttp import web
from typer.testing import CliRunner

from opsctl.bench import BenchConfig, Endpoint, percentile, run_bench, summarize_ms
from opsctl.commands.bench import bench_command
from tests.support import free_port, port_open, wait_for


def _options(model: str) -> dict[str, str]:
    opts = {}
    for part in model.split("|")[1:]:
        key, _, value = part.partition("=")
        opts[key] = value
    return opts


class FakeUpstream:
    """An OpenAI-shaped server in a background thread; counts requests per model."""

    def __init__(self) -> None:
        self.port = free_port()
        self.counts: Counter[str] = Counter()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.runner: web.AppRunner | None = None
        self.lock: asyncio.Lock | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.completion)
        app.router.add_post("/v1/completions", self.completion)
        app.router.add_post("/v1/embeddings", self.embeddings)
        self.lock = asyncio.Lock()
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def start(self) -> None:
        self.thread.start()
        wait_for(lambda: port_open(self.port), timeout=5, what="in-test upstream")

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _delay(self, opts: dict[str, str]) -> None:
        lat = float(opts.get("lat", "0"))
        if "serial" in opts:  # one request at a time: a target with fixed capacity
            assert self.lock is not None
            async with self.lock:
                await asyncio.sleep(lat)
        elif lat:
            await asyncio.sleep(lat)

    async def completion(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body["model"]
        self.counts[model] += 1
        opts = _options(model)
        if "fail" in opts:
            status, _, every = opts["fail"].partition(":")
            if self.counts[model] % int(every or 1) == 0:
                return web.json_response({"error": {"message": "injected", "type": "server_error"}},
                                         status=int(status))
        if not body.get("stream"):
            await self._delay(opts)
            if "messages" in body:
                choice = {"index": 0, "message": {"role": "assistant", "content": "hi there"}}
            else:
                choice = {"index": 0, "text": "hi there"}
            return web.json_response({"id": "x", "object": "chat.completion", "model": model,
                                      "choices": [choice], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chat = "messages" in body
        await resp.write(b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"role": "assistant",
                                                                                        "content": ""}}]}) + b"\n\n")
        await asyncio.sleep(float(opts.get("ttft", "0")))
        for word in ("hi", " there", "!"):
            choice = {"index": 0, "delta": {"content": word}} if chat else {"index": 0, "text": word}
            await resp.write(b"data: " + orjson.dumps({"choices": [choice]}) + b"\n\n")
            await asyncio.sleep(float(opts.get("itl", "0")))
        if "truncate" not in opts:
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.counts[body["model"]] += 1
        return web.json_response({"data": [{"embedding": [0.1, 0.2], "index": 0}], "model": body["model"]})


@pytest.fixture(scope="module")
def upstream():
    server = FakeUpstream()
    server.start()
    yield server
    server.stop()


def _model(spec: str = "") -> str:
    return f"m{uuid.uuid4().hex[:8]}" + (f"|{spec}" if spec else "")


def test_percentile_matches_linear_interpolation():
    values = sorted(float(v) for v in range(1, 11))
    assert percentile(values, 50) == 5.5
    assert percentile(values, 90) == pytest.approx(9.1)
    assert percentile(values, 100) == 10.0
    assert percentile([7.0], 99) == 7.0
    summary = summarize_ms([0.001 * v for v in range(1, 101)])
    assert summary == {"p50": 50.5, "p90": 90.1, "p99": 99.01, "max": 100.0, "mean": 50.5}
    assert summarize_ms([]) is None
    with pytest.raises(ValueError):
        percentile([], 50)


async def test_closed_loop_counts_requests_and_latency(upstream):
    model = _model("lat=0.02")
    cfg = BenchConfig(url=upstream.url, model=model, concurrency=4, duration_s=1.0, warmup_s=0.2)
    result = await run_bench(cfg)
    # every request the client sent reached the server, and all succeeded
    assert result.total_requests == upstream.counts[model]
    assert result.errors == {} and result.successes == result.requests
    # 4 workers x (1 s / ~20 ms) ~= 200 requests in the window
    assert 120 <= result.requests <= 205
    assert result.rps == pytest.approx(result.requests / result.elapsed_s)
    lat = result.latency_ms
    assert 19.5 <= lat["p50"] <= 35 and lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert result.ttft_ms is None


async def test_open_loop_hits_target_rate_independent_of_latency(upstream):
    model = _model("lat=0.03")
    cfg = BenchConfig(url=upstream.url, model=model, rate=200, duration_s=1.0, warmup_s=0.1)
    result = await run_bench(cfg)
    assert result.mode == "open" and result.dropped == 0
    assert 190 <= result.requests <= 202
    assert result.rps == pytest.approx(200, rel=0.1)
    assert upstream.counts[model] == result.total_requests
    assert 29.5 <= result.latency_ms["p50"] <= 50
    assert result.send_lag_ms is not None and result.send_lag_ms["p50"] < 5


async def test_open_loop_latency_counts_from_intended_time(upstream):
    # the target serves one request per 20 ms (50/s); offered 100/s the queue grows, and the
    # latency measured from each intended send time must show it (no coordinated omission)
    cfg = BenchConfig(url=upstream.url, model=_model("lat=0.02|serial"), rate=100, duration_s=0.8, warmup_s=0)
    result = await run_bench(cfg)
    assert result.successes == result.requests >= 75
    assert result.latency_ms["max"] > 500


async def test_open_loop_drops_beyond_in_flight_cap(upstream):
    cfg = BenchConfig(url=upstream.url, model=_model("lat=0.5"), rate=100, duration_s=0.5, warmup_s=0,
                      max_in_flight=5)
    result = await run_bench(cfg)
    assert result.requests == 5 and result.successes == 5
    assert result.dropped == pytest.approx(45, abs=2)


@pytest.mark.parametrize("endpoint", [Endpoint.chat, Endpoint.completions])
async def test_stream_measures_ttft(upstream, endpoint):
    cfg = BenchConfig(url=upstream.url, model=_model("ttft=0.03|itl=0.01"), concurrency=2, duration_s=0.5,
                      warmup_s=0, stream=True, endpoint=endpoint)
    result = await run_bench(cfg)
    assert result.errors == {} and result.successes > 5
    ttft, lat = result.ttft_ms, result.latency_ms
    assert 29.5 <= ttft["p50"] <= 45
    assert lat["p50"] >= ttft["p50"] + 25  # three tokens ~10 ms apart follow the first


async def test_truncated_stream_is_an_error(upstream):
    cfg = BenchConfig(url=upstream.url, model=_model("truncate"), concurrency=1, duration_s=0.2, warmup_s=0,
                      stream=True)
    result = await run_bench(cfg)
    assert result.successes == 0 and set(result.errors) == {"stream_incomplete"}


async def test_errors_counted_by_status(upstream):
    model = _model("fail=500:2")
    cfg = BenchConfig(url=upstream.url, model=model, concurrency=2, duration_s=0.4, warmup_s=0)
    result = await run_bench(cfg)
    assert set(result.errors) == {"http_500"}
    assert result.errors["http_500"] == pytest.approx(result.requests / 2, abs=2)
    assert result.successes + result.errors["http_500"] == result.requests

    all_429 = await run_bench(BenchConfig(url=upstream.url, model=_model("fail=429"), concurrency=1,
                                          duration_s=0.2, warmup_s=0))
    assert all_429.successes == 0 and all_429.errors["http_429"] == all_429.requests > 0


async def test_connect_errors_counted():
    cfg = BenchConfig(url=f"http://127.0.0.1:{free_port()}", model="m", concurrency=1, duration_s=0.2, warmup_s=0)
    result = await run_bench(cfg)
    assert result.successes == 0 and result.errors["connect_error"] == result.requests > 0


async def test_embeddings_and_measure_hook(upstream):
    model = _model()
    marks: list[int] = []
    cfg = BenchConfig(url=upstream.url + "/v1", model=model, concurrency=2, duration_s=0.3, warmup_s=0.2,
                      endpoint=Endpoint.embeddings)
    result = await run_bench(cfg, on_measure_start=lambda: marks.append(upstream.counts[model]))
    assert result.url.endswith("/v1/embeddings") and result.errors == {}
    assert len(marks) == 1 and 0 < marks[0] < upstream.counts[model]


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("bench")(bench_command)
    app.command("noop")(lambda: None)  # keeps "bench" a sub-command, as the real CLI mounts it
    return app


def test_cli_json_output_shape(upstream):
    res = CliRunner().invoke(_cli(), ["bench", upstream.url, "--model", _model("ttft=0.005"), "--stream",
                                      "--concurrency", "2", "--duration", "0.3", "--warmup", "0", "-o", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert {"rps", "latency_ms", "ttft_ms", "errors", "requests", "successes", "dropped"} <= set(data)
    assert set(data["latency_ms"]) == {"p50", "p90", "p99", "max", "mean"}
    assert set(data["ttft_ms"]) >= {"p50", "p90", "p99"}
    assert data["errors"] == {} and data["requests"] == data["successes"] > 0 and data["rps"] > 0


def test_cli_table_output(upstream):
    res = CliRunner().invoke(_cli(), ["bench", upstream.url, "--model", _model(), "--rate", "50",
                                      "--duration", "0.2", "--warmup", "0"])
    assert res.exit_code == 0, res.output
    assert "req/s" in res.stdout and "latency ms" in res.stdout and "p99" in res.stdout


def test_cli_all_failed_exits_1():
    res = CliRunner().invoke(_cli(), ["bench", f"http://127.0.0.1:{free_port()}", "--model", "m",
                                      "--concurrency", "1", "--duration", "0.1", "--warmup", "0", "-o", "json"])
    assert res.exit_code == 1
    assert json.loads(res.stdout)["errors"]["connect_error"] > 0
    assert res.stderr.startswith("error: no request succeeded") and res.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["ftp://host/x", "--model", "m"], "URL must be http"),
        (["not a url", "--model", "m"], "URL must be http"),
        (["http://127.0.0.1:1", "--model", "m", "--concurrency", "-1"], "--concurrency"),
        (["http://127.0.0.1:1", "--model", "m", "--duration", "0"], "--duration"),
        (["http://127.0.0.1:1", "--model", "m", "--warmup", "-1"], "--warmup"),
        (["http://127.0.0.1:1", "--model", "m", "--rate", "-5"], "--rate"),
        (["http://127.0.0.1:1", "--model", "m", "--max-tokens", "0"], "--max-tokens"),
        (["http://127.0.0.1:1", "--model", "m", "--rate", "10", "--concurrency", "4"], "exclusive"),
        (["http://127.0.0.1:1", "--model", "m", "--stream", "--endpoint", "embeddings"], "--stream"),
        (["http://127.0.0.1:1", "--model", " "], "--model"),
    ],
)
def test_cli_bad_input_exits_2(args, fragment):
    res = CliRunner().invoke(_cli(), ["bench", *args])
    assert res.exit_code == 2
    assert fragment in res.stderr and res.stderr.count("\n") == 1


def test_cli_missing_model_is_usage_error():
    res = CliRunner().invoke(_cli(), ["bench", "http://127.0.0.1:1"])
    assert res.exit_code == 2 and "--model" in res.stderr


def test_docs_section_replaced_in_place():
    from benchmarks.gateway import replace_section

    section = "## Gateway\n\nnew numbers\n"
    assert replace_section("", section) == "# Benchmarks\n\n" + section
    doc = "# Benchmarks\n\n## Lake\n\nlake rows\n\n## Gateway\n\nold numbers\n\n## TUI\n\ntui\n"
    out = replace_section(doc, section)
    assert out == "# Benchmarks\n\n## Lake\n\nlake rows\n\n## Gateway\n\nnew numbers\n\n## TUI\n\ntui\n"
    assert replace_section(out, section) == out
