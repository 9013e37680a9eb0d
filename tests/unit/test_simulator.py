"""The vLLM simulator: OpenAI shapes, streaming order, token rules, latency, faults, metrics, CLI.

In-process tests use aiohttp's test server on loopback; one test runs the real process.
"""

from __future__ import annotations

import array
import asyncio
import base64
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
import typer
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from opsctl.commands import sim as sim_commands
from opsctl.sim import (
    CRASH_EXIT_CODE,
    SimConfig,
    count_completion_tokens,
    count_prompt_tokens,
    create_sim_app,
)
from opsctl.sim.tokens import text_tokens
from tests.support import eventually, free_port, port_open, repo_root, wait_for

MODEL = "sim-model"
MakeClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """Factory: a test client for a simulator built with the given SimConfig fields."""
    clients: list[TestClient] = []

    async def make(**fields: Any) -> TestClient:
        client = TestClient(TestServer(create_sim_app(SimConfig(model=MODEL, **fields))))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()



def chat(content: str = "hello world!", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


async def sse_events(response: aiohttp.ClientResponse) -> list[Any]:
    """The data payloads of an SSE body, in order; "[DONE]" kept as a string."""
    raw = (await response.read()).decode()
    assert raw.endswith("\n\n")
    events = []
    for block in raw.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        payload = block[len("data: "):]
        events.append(payload if payload == "[DONE]" else orjson.loads(payload))
    return events


async def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted({"model_name": MODEL, **labels}.items())))]


# --- shapes and the token rule -------------------------------------------------------------


async def test_chat_completion_shape_and_documented_token_rule(make_client: MakeClient) -> None:
    client = await make_client()
    body = chat("hello world!")  # 12 chars -> 3 tokens; prompt = 3 + (4 + 3) = 10; natural = 16 + 10
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status == 200
    data = await response.json()
    assert data["object"] == "chat.completion" and data["model"] == MODEL
    assert data["id"].startswith("chatcmpl-") and len(data["id"]) == len("chatcmpl-") + 32
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == " ".join(f"token{k}" for k in range(26))
    assert data["usage"] == {"prompt_tokens": 10, "completion_tokens": 26, "total_tokens": 36,
                             "prompt_tokens_details": None}
    assert count_prompt_tokens(body) == 10 and count_completion_tokens(body) == (26, "stop")


async def test_tokens_are_deterministic_and_capped_by_max_tokens(make_client: MakeClient) -> None:
    client = await make_client()
    body = chat("x" * 101, max_tokens=5)
    first = await (await client.post("/v1/chat/completions", json=body)).json()
    second = await (await client.post("/v1/chat/completions", json=body)).json()
    assert first["usage"] == second["usage"]
    assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]
    assert first["usage"]["prompt_tokens"] == count_prompt_tokens(body) == 3 + 4 + 26
    assert first["usage"]["completion_tokens"] == 5 and first["choices"][0]["finish_reason"] == "length"
    # max_completion_tokens wins over max_tokens; ignore_eos makes the answer exactly max_tokens long
    capped = await (await client.post("/v1/chat/completions", json=chat(max_completion_tokens=3,
                                                                       max_tokens=9))).json()
    assert capped["usage"]["completion_tokens"] == 3
    long = await (await client.post("/v1/chat/completions", json=chat(max_tokens=100, ignore_eos=True))).json()
    assert long["usage"]["completion_tokens"] == 100 and long["choices"][0]["finish_reason"] == "stop"


async def test_completions_with_text_and_token_id_prompts(make_client: MakeClient) -> None:
    client = await make_client()
    text = await (await client.post("/v1/completions", json={"model": MODEL, "prompt": "abcdefgh",
                                                              "max_tokens": 4})).json()
    assert text["object"] == "text_completion" and text["id"].startswith("cmpl-")
    assert text["choices"][0]["text"] == "token0 token1 token2 token3"
    assert text["usage"]["prompt_tokens"] == 2 and text["usage"]["completion_tokens"] == 4
    ids = await (await client.post("/v1/completions", json={"prompt": [1, 2, 3, 4, 5]})).json()
    assert ids["usage"]["prompt_tokens"] == 5 and ids["usage"]["completion_tokens"] == 16 + 5


async def test_embeddings_are_unit_vectors_deterministic_and_base64(make_client: MakeClient) -> None:
    client = await make_client(embedding_dim=32)
    body = {"model": MODEL, "input": ["hello", "world"]}
    data = await (await client.post("/v1/embeddings", json=body)).json()
    again = await (await client.post("/v1/embeddings", json=body)).json()
    assert data["object"] == "list" and [d["index"] for d in data["data"]] == [0, 1]
    vectors = [d["embedding"] for d in data["data"]]
    assert all(len(v) == 32 and math.isclose(math.fsum(x * x for x in v), 1.0) for v in vectors)
    assert vectors[0] != vectors[1] and vectors == [d["embedding"] for d in again["data"]]
    assert data["usage"]["prompt_tokens"] == 4
    b64 = await (await client.post("/v1/embeddings", json={**body, "encoding_format": "base64"})).json()
    decoded = array.array("f", base64.b64decode(b64["data"][0]["embedding"])).tolist()
    assert [round(x, 5) for x in decoded] == [round(x, 5) for x in vectors[0]]


async def test_models_health_version(make_client: MakeClient) -> None:
    client = await make_client(max_model_len=4096)
    models = await (await client.get("/v1/models")).json()
    assert models["object"] == "list"
    assert [(m["id"], m["object"], m["max_model_len"]) for m in models["data"]] == [(MODEL, "model", 4096)]
    assert (await client.get("/health")).status == 200
    assert "version" in await (await client.get("/version")).json()


@pytest.mark.parametrize(("text", "tokens"), [
    ("", 0), ("abcd", 1), ("abcde", 2), ("東京", 6), ("😀", 4), ("héllo", 1 + 2), ("def f(): 東", 3 + 3),
])
def test_text_tokens_count_non_ascii_as_its_utf8_bytes(text: str, tokens: int) -> None:
    assert text_tokens(text) == tokens


async def test_cjk_and_emoji_prompts_cost_their_bytes(make_client: MakeClient) -> None:
    client = await make_client()
    text = "東京は日本の首都です。😀" * 10  # 11 CJK chars x 3 bytes + 4 bytes for the emoji, per repeat
    body = chat(text, max_tokens=1)
    data = await (await client.post("/v1/chat/completions", json=body)).json()
    assert data["usage"]["prompt_tokens"] == count_prompt_tokens(body) == 3 + 4 + 10 * (11 * 3 + 4)
    assert data["usage"]["prompt_tokens"] > len(text)  # chars / 4 would be a 4x under-estimate
    completion = {"prompt": ["naïve", [1, 2, 3]], "max_tokens": 1}
    usage = (await (await client.post("/v1/completions", json=completion)).json())["usage"]
    assert usage["prompt_tokens"] == count_prompt_tokens(completion) == (4 + 3) // 4 + 2 + 3


async def test_n_choices_share_the_prompt_and_add_up_their_tokens(make_client: MakeClient) -> None:
    client = await make_client()
    body = chat("hello world!", n=3, max_tokens=4)
    data = await (await client.post("/v1/chat/completions", json=body)).json()
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    assert {c["message"]["content"] for c in data["choices"]} == {"token0 token1 token2 token3"}
    assert data["usage"] == {"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22,
                             "prompt_tokens_details": None}
    assert count_completion_tokens(body) == (12, "length")


async def test_several_prompts_with_n_and_best_of(make_client: MakeClient) -> None:
    client = await make_client()
    body = {"prompt": ["abcd", [7] * 17], "n": 2, "best_of": 3}  # 1 and 17 prompt tokens: 17 and 17 tokens
    data = await (await client.post("/v1/completions", json=body)).json()
    assert [c["index"] for c in data["choices"]] == [0, 1, 2, 3]  # prompt-major, as OpenAI orders them
    assert [len(c["text"].split()) for c in data["choices"]] == [17, 17, 17, 17]
    assert data["usage"]["prompt_tokens"] == count_prompt_tokens(body) == 18
    # best_of sequences are generated (and counted) per prompt; only n are returned
    assert data["usage"]["completion_tokens"] == count_completion_tokens(body)[0] == 2 * 3 * 17
    ids = await (await client.post("/v1/completions", json={"prompt": [[1, 2], [3]], "max_tokens": 2})).json()
    assert [c["index"] for c in ids["choices"]] == [0, 1] and ids["usage"]["prompt_tokens"] == 3


async def test_streams_with_n_and_several_prompts_interleave_choices(make_client: MakeClient) -> None:
    client = await make_client(tokens_per_s=1000)
    body = {"prompt": ["a", "bbbbbbbb"], "n": 2, "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True}}
    events = await sse_events(await client.post("/v1/completions", json=body))
    assert events[-1] == "[DONE]" and events[-2]["choices"] == []
    assert events[-2]["usage"]["prompt_tokens"] == 3 and events[-2]["usage"]["completion_tokens"] == 4 * 3
    by_index: dict[int, list[dict]] = {}
    for event in events[:-2]:
        (choice,) = event["choices"]
        by_index.setdefault(choice["index"], []).append(choice)
    assert sorted(by_index) == [0, 1, 2, 3]
    for choices in by_index.values():
        assert "".join(c["text"] for c in choices) == "token0 token1 token2"
        assert [c["finish_reason"] for c in choices] == [None, None, None, "length"]
    chat_events = await sse_events(await client.post("/v1/chat/completions", json=chat(n=2, max_tokens=2,
                                                                                      stream=True)))
    roles = [e["choices"][0]["index"] for e in chat_events[:-1] if "role" in e["choices"][0]["delta"]]
    assert roles == [0, 1] and chat_events[-1] == "[DONE]"


# --- model names --------------------------------------------------------------------------------


async def test_other_model_names_get_vllms_404(make_client: MakeClient) -> None:
    client = await make_client()
    for path, body in (("/v1/chat/completions", chat(model="other")),
                       ("/v1/completions", {"model": "other", "prompt": "a"}),
                       ("/v1/embeddings", {"model": "other", "input": "a"})):
        response = await client.post(path, json=body)
        assert response.status == 404
        assert await response.json() == {"error": {"message": "The model `other` does not exist.",
                                                   "type": "NotFoundError", "param": "model", "code": 404}}


async def test_served_model_name_replaces_the_model_name(make_client: MakeClient) -> None:
    client = await make_client(served_model_name="org/model-v2")
    assert (await client.post("/v1/chat/completions", json=chat())).status == 404  # --model is not served
    data = await (await client.post("/v1/chat/completions", json=chat(model="org/model-v2"))).json()
    assert data["model"] == "org/model-v2"
    models = (await (await client.get("/v1/models")).json())["data"]
    assert [(m["id"], m["root"]) for m in models] == [("org/model-v2", MODEL)]
    samples = await scrape(client)
    assert samples[("vllm:num_requests_running", (("model_name", "org/model-v2"),))] == 0
    several = await make_client(served_model_name=["a", "b"])
    assert [m["id"] for m in (await (await several.get("/v1/models")).json())["data"]] == ["a", "b"]
    assert (await several.post("/v1/completions", json={"model": "b", "prompt": "x"})).status == 200


# --- streaming --------------------------------------------------------------------------------


async def test_chat_stream_order_without_usage(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.post("/v1/chat/completions", json=chat(stream=True, max_tokens=3))
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    events = await sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:4]] == ["token0", " token1", " token2"]
    assert chunks[4]["choices"][0]["delta"] == {} and chunks[4]["choices"][0]["finish_reason"] == "length"
    assert len(chunks) == 5 and all("usage" not in c for c in chunks)
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["object"] == "chat.completion.chunk"


async def test_streams_end_with_usage_chunk_only_when_asked(make_client: MakeClient) -> None:
    client = await make_client()
    body = chat(stream=True, stream_options={"include_usage": True})
    events = await sse_events(await client.post("/v1/chat/completions", json=body))
    usage_chunk = events[-2]
    assert events[-1] == "[DONE]" and usage_chunk["choices"] == []
    n = count_completion_tokens(body)[0]
    assert usage_chunk["usage"]["prompt_tokens"] == count_prompt_tokens(body)
    assert usage_chunk["usage"]["completion_tokens"] == n == len(events) - 4  # role, finish, usage, DONE
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    text = await sse_events(await client.post("/v1/completions", json={
        "prompt": "abcd", "max_tokens": 2, "stream": True, "stream_options": {"include_usage": True}}))
    assert [e["choices"][0]["text"] for e in text[:3]] == ["token0", " token1", ""]
    assert text[2]["choices"][0]["finish_reason"] == "length"
    assert text[3]["choices"] == [] and text[3]["usage"]["total_tokens"] == 3 and text[4] == "[DONE]"


# --- latency model ----------------------------------------------------------------------------


async def test_ttft_and_token_rate_are_honoured(make_client: MakeClient) -> None:
    client = await make_client(ttft_ms=100, tokens_per_s=50)  # 5 tokens: first at 100 ms, last at 180 ms
    started = time.monotonic()
    response = await client.post("/v1/chat/completions", json=chat(stream=True, max_tokens=5))
    first = await response.content.readuntil(b"\n\n")
    first_at = time.monotonic() - started
    await response.read()
    done_at = time.monotonic() - started
    assert b'"role":"assistant"' in first
    assert first_at >= 0.09
    assert done_at >= 0.17
    started = time.monotonic()
    await (await client.post("/v1/chat/completions", json=chat(max_tokens=5))).json()
    assert time.monotonic() - started >= 0.17


# --- faults -----------------------------------------------------------------------------------


async def test_error_rate_one_answers_500_openai_shaped(make_client: MakeClient) -> None:
    client = await make_client(error_rate=1.0)
    for path, body in (("/v1/chat/completions", chat()), ("/v1/embeddings", {"input": "x"})):
        response = await client.post(path, json=body)
        assert response.status == 500
        error = (await response.json())["error"]
        assert error["type"] == "server_error" and error["message"]


async def test_seeded_error_rate_replays_the_same_pattern(make_client: MakeClient) -> None:
    async def pattern() -> list[int]:
        client = await make_client(error_rate=0.5, seed=7)
        return [(await client.post("/v1/completions", json={"prompt": "a"})).status for _ in range(20)]

    first, second = await pattern(), await pattern()
    assert first == second and {200, 500} == set(first)


async def test_hung_request_never_answers_and_counts_as_running(make_client: MakeClient) -> None:
    client = await make_client(hang_rate=1.0)
    with pytest.raises(asyncio.TimeoutError):
        await client.post("/v1/chat/completions", json=chat(), timeout=aiohttp.ClientTimeout(total=0.3))

    async def running(n: float) -> bool:
        return metric(await scrape(client), "vllm:num_requests_running") == n

    await eventually(lambda: running(0), what="the hung request to notice its client left")
    async with aiohttp.ClientSession() as session:
        pending = asyncio.ensure_future(session.post(client.make_url("/v1/chat/completions"), json=chat()))
        await eventually(lambda: running(1), what="the hung request to be running")
        started = time.monotonic()
        await client.server.close()  # shutdown releases hung requests instead of waiting out the timeout
        assert time.monotonic() - started < 2
        response = await pending
        assert response.status == 503 and (await response.json())["error"]["code"] == "shutting_down"


async def test_slow_start_answers_503_then_200(make_client: MakeClient) -> None:
    client = await make_client(slow_start_s=0.3)
    health = await client.get("/health")
    assert health.status == 503 and (await health.json())["error"]["code"] == "engine_unavailable"
    assert (await client.post("/v1/chat/completions", json=chat())).status == 503
    assert (await client.get("/metrics")).status == 200

    async def healthy() -> bool:
        return (await client.get("/health")).status == 200

    await eventually(healthy, what="slow start to end")
    assert (await client.post("/v1/chat/completions", json=chat())).status == 200


async def test_crash_after_n_answers_then_dies(make_client: MakeClient) -> None:
    client = await make_client(crash_after=2)
    assert (await client.post("/v1/chat/completions", json=chat())).status == 200
    last = await client.post("/v1/chat/completions", json=chat())
    assert last.status == 200 and (await last.json())["usage"]["completion_tokens"] == 26
    assert (await client.post("/v1/chat/completions", json=chat())).status == 503
    assert (await client.get("/health")).status == 503


async def test_max_num_seqs_queues_extra_requests_as_waiting(make_client: MakeClient) -> None:
    client = await make_client(max_num_seqs=1, ttft_ms=150)
    requests = [asyncio.ensure_future(client.post("/v1/completions", json={"prompt": "a"})) for _ in range(3)]

    async def queued() -> bool:
        samples = await scrape(client)
        return (metric(samples, "vllm:num_requests_running"), metric(samples, "vllm:num_requests_waiting"),
                metric(samples, "vllm:kv_cache_usage_perc")) == (1, 2, 1.0)

    await eventually(queued, what="one running and two waiting")
    assert [r.status for r in await asyncio.gather(*requests)] == [200, 200, 200]
    samples = await scrape(client)
    assert metric(samples, "vllm:num_requests_waiting") == 0 and metric(samples, "vllm:kv_cache_usage_perc") == 0


async def test_garbage_rate_answers_200_with_a_body_that_is_not_json(make_client: MakeClient) -> None:
    client = await make_client(garbage_rate=1.0)
    response = await client.post("/v1/chat/completions", json=chat())
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/html")
    with pytest.raises(ValueError):
        orjson.loads(await response.read())
    stream = await client.post("/v1/chat/completions", json=chat(stream=True))
    assert stream.status == 200 and stream.headers["Content-Type"].startswith("text/event-stream")
    raw = await stream.read()
    assert raw and not raw.startswith(b"data:") and b"[DONE]" not in raw

    async def pattern() -> list[bool]:
        seeded = await make_client(garbage_rate=0.5, seed=3)
        answers = [await seeded.post("/v1/completions", json={"prompt": "a"}) for _ in range(16)]
        return [r.headers["Content-Type"].startswith("text/html") for r in answers]

    first = await pattern()
    assert first == await pattern() and set(first) == {True, False}


LIES = {"huge": 1_000_000_000, "string": "16", "list": [16], "negative": -16, "float": 16.5}


@pytest.mark.parametrize("mode", [*LIES, "missing"])
async def test_usage_lie_in_answers_and_stream_usage_chunks(make_client: MakeClient, mode: str) -> None:
    client = await make_client(usage_lie=mode)
    body = {"prompt": "abcd", "max_tokens": 16}  # 16 completion tokens, honestly
    data = await (await client.post("/v1/completions", json=body)).json()
    events = await sse_events(await client.post("/v1/completions", json={
        **body, "stream": True, "stream_options": {"include_usage": True}}))
    assert events[-1] == "[DONE]" and "".join(e["choices"][0]["text"] for e in events[:16]).count("token") == 16
    if mode == "missing":
        assert "usage" not in data and all("usage" not in e for e in events[:-1])
    else:
        assert data["usage"]["completion_tokens"] == LIES[mode] and data["usage"]["prompt_tokens"] == 1
        assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == LIES[mode]


async def test_hang_after_headers_starts_streams_but_never_sends_an_event(make_client: MakeClient) -> None:
    client = await make_client(hang_after_headers=True)
    response = await client.post("/v1/chat/completions", json=chat(stream=True))
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(response.content.read(1), 0.3)
    response.close()
    with pytest.raises(asyncio.TimeoutError):  # unary: not even the status line
        await client.post("/v1/chat/completions", json=chat(), timeout=aiohttp.ClientTimeout(total=0.3))
    started = time.monotonic()
    async with aiohttp.ClientSession() as session, session.post(client.make_url("/v1/chat/completions"),
                                                                json=chat(stream=True)) as pending:
        assert pending.status == 200
        await client.server.close()  # shutdown ends the silent stream instead of waiting it out
        assert await pending.read() == b""
    assert time.monotonic() - started < 3


# --- metrics ----------------------------------------------------------------------------------


async def test_metrics_count_requests_and_tokens(make_client: MakeClient) -> None:
    client = await make_client()
    bodies = [chat("a" * 40), chat("hi", max_tokens=4), chat("stream me", stream=True)]
    for body in bodies:
        assert (await client.post("/v1/chat/completions", json=body)).status == 200
    samples = await scrape(client)
    assert metric(samples, "vllm:prompt_tokens_total") == sum(count_prompt_tokens(b) for b in bodies)
    assert metric(samples, "vllm:generation_tokens_total") == sum(count_completion_tokens(b)[0] for b in bodies)
    assert metric(samples, "vllm:request_success_total", finished_reason="stop") == 2
    assert metric(samples, "vllm:request_success_total", finished_reason="length") == 1
    assert metric(samples, "vllm:time_to_first_token_seconds_count") == 3
    assert metric(samples, "vllm:e2e_request_latency_seconds_count") == 3
    assert metric(samples, "vllm:e2e_request_latency_seconds_bucket", le="+Inf") == 3
    assert metric(samples, "vllm:num_requests_running") == 0


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "payload", "status", "param"),
    [
        ("/v1/chat/completions", b"{not json", 400, None),
        ("/v1/chat/completions", b"[1, 2]", 400, None),
        ("/v1/chat/completions", orjson.dumps({"model": MODEL}), 400, "messages"),
        ("/v1/chat/completions", orjson.dumps({"messages": []}), 400, "messages"),
        ("/v1/chat/completions", orjson.dumps({"messages": [{"content": "no role"}]}), 400, "messages"),
        ("/v1/chat/completions", orjson.dumps(chat(max_tokens=0)), 400, "max_tokens"),
        ("/v1/chat/completions", orjson.dumps(chat(max_tokens="9")), 400, "max_tokens"),
        ("/v1/chat/completions", orjson.dumps(chat(stream_options={"include_usage": True})), 400, "stream_options"),
        ("/v1/chat/completions", orjson.dumps(chat(max_tokens=9000)), 400, "max_tokens"),
        ("/v1/chat/completions", orjson.dumps(chat(n=0)), 400, "n"),
        ("/v1/chat/completions", orjson.dumps(chat(n="2")), 400, "n"),
        ("/v1/completions", orjson.dumps({"prompt": "a", "n": 3, "best_of": 2}), 400, "best_of"),
        ("/v1/completions", orjson.dumps({"prompt": "a", "n": 1, "best_of": 2, "stream": True}), 400, "best_of"),
        ("/v1/completions", orjson.dumps({"prompt": ["a"] * 100, "best_of": 50}), 400, "n"),
        ("/v1/completions", orjson.dumps({"model": MODEL}), 400, "prompt"),
        ("/v1/completions", orjson.dumps({"prompt": []}), 400, "prompt"),
        ("/v1/completions", orjson.dumps({"prompt": ["a", 1]}), 400, "prompt"),
        ("/v1/completions", orjson.dumps({"prompt": [[1, 2], []]}), 400, "prompt"),
        ("/v1/completions", orjson.dumps({"prompt": ["a", "b" * 40_000], "max_tokens": 2}), 400, "max_tokens"),
        ("/v1/embeddings", orjson.dumps({"model": MODEL}), 400, "input"),
        ("/v1/embeddings", orjson.dumps({"input": "a", "encoding_format": "int8"}), 400, "encoding_format"),
    ],
)
async def test_bad_input_is_rejected_openai_shaped(
    make_client: MakeClient, path: str, payload: bytes, status: int, param: str | None
) -> None:
    client = await make_client()
    response = await client.post(path, data=payload, headers={"Content-Type": "application/json"})
    assert response.status == status
    error = (await response.json())["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


# --- CLI and the real process -----------------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [
        ["--model", "m", "--error-rate", "1.5"],
        ["--model", "m", "--hang-rate", "-0.1"],
        ["--model", "m", "--error-rate", "0.6", "--hang-rate", "0.6"],
        ["--model", "m", "--ttft-ms", "-1"],
        ["--model", "m", "--slow-start", "-2"],
        ["--model", "m", "--crash-after", "0"],
        ["--model", "m", "--max-num-seqs", "0"],
        ["--model", "m", "--port", "70000"],
        ["--model", "m", "--tokens-per-s", "fast"],
        ["--model", "m", "--garbage-rate", "1.5"],
        ["--model", "m", "--error-rate", "0.5", "--garbage-rate", "0.6"],
        ["--model", "m", "--usage-lie", "sometimes"],
        ["--model", "m", "--served-model-name", " "],
        ["--port", "8000"],
    ],
)
def test_cli_rejects_bad_flags_with_exit_2(flags: list[str]) -> None:
    cli = typer.Typer()
    cli.add_typer(sim_commands.app, name="sim")
    result = CliRunner().invoke(cli, ["sim", "serve", *flags])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip()
    if result.stderr.startswith("error: "):  # our own validation: exactly one line
        assert len(result.stderr.strip().splitlines()) == 1


def _start_process(*flags: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "opsctl.sim", "--model", "m", "--port", str(port), *flags],
        cwd=repo_root(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(repo_root())},
    )
    try:
        wait_for(lambda: port_open(port) or proc.poll() is not None, timeout=15, what="the simulator process")
    except AssertionError:
        proc.kill()
        raise
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    return proc, port


def _post(port: int, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=orjson.dumps(body),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return orjson.loads(response.read())


def test_process_serves_and_exits_cleanly_on_sigterm() -> None:
    proc, port = _start_process("--served-model-name", "org/m", "--usage-lie", "string")
    try:
        answer = _post(port, {"model": "org/m", "messages": [{"role": "user", "content": "hi"}]})
        assert answer["usage"]["prompt_tokens"] == 8 and answer["usage"]["completion_tokens"] == "24"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stderr:
            proc.stderr.close()


def test_process_crashes_after_n_requests() -> None:
    proc, port = _start_process("--crash-after", "1")
    try:
        assert _post(port, {"messages": [{"role": "user", "content": "hi"}]})["choices"][0]["finish_reason"] == "stop"
        assert proc.wait(timeout=10) == CRASH_EXIT_CODE
        assert not port_open(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stderr:
            proc.stderr.close()
