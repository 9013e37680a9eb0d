"""Property-based fuzzing of the inference API: hostile bodies never yield a 5xx of the gateway's
own, errors are OpenAI-shaped, and every reservation is settled afterwards.

The gateway and a simulator pod run on their own event loop in a thread; hypothesis drives a
plain HTTP client against them, so examples are independent requests as a real client sends.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import threading
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fleet import ADMIN_TOKEN, gateway_settings, running_gateway, sim_pod

ALLOWED = {200, 400, 401, 403, 404, 413, 429, 502, 503, 504}
PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/inference")

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
    st.sampled_from(["", "日本語", "😀" * 10, "\x00", "m", "user", "assistant", "-1", "1e400"]),
)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=10), inner, max_size=4), max_leaves=12)


@st.composite
def deep(draw) -> object:
    value = draw(scalars)
    for _ in range(draw(st.integers(min_value=200, max_value=400))):
        value = [value] if draw(st.booleans()) else {"k": value}
    return value


hostile = st.one_of(json_values, deep(), st.integers(min_value=2**40, max_value=2**80),
                    st.sampled_from([-1, 0, 1, 2, 4000, 10**9]))
VALID = {
    "max_tokens": st.integers(min_value=1, max_value=64),
    "max_completion_tokens": st.integers(min_value=1, max_value=64),
    "n": st.integers(min_value=1, max_value=3),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "temperature": st.floats(min_value=0, max_value=2),
    "top_p": st.floats(min_value=0, max_value=1),
    "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=3)),
    "seed": st.integers(min_value=0, max_value=2**31),
    "user": st.text(max_size=20),
    "ignore_eos": st.booleans(),
    "presence_penalty": st.floats(min_value=-2, max_value=2),
}
FIELDS = [*VALID, "model", "messages", "prompt", "input", "best_of", "logprobs", "top_logprobs", "logit_bias",
          "tools", "tool_choice", "response_format", "min_tokens", "echo", "stream_options", "extra_field",
          "chat_template"]
text_or_parts = st.one_of(st.text(max_size=60), st.lists(st.fixed_dictionaries(
    {"type": st.just("text"), "text": st.text(max_size=20)}), min_size=1, max_size=3))
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]),
                                           "content": text_or_parts}), min_size=1, max_size=3)
MESSAGE_FIELDS = ["role", "content", "name", "tool_calls", "tool_call_id"]


@st.composite
def bodies(draw) -> dict:
    """A valid body of some kind, then 0-3 fields (or message fields) replaced by hostile values."""
    body: dict = {"model": "m"}
    shape = draw(st.sampled_from(["messages", "prompt", "input"]))
    body[shape] = draw({"messages": messages, "prompt": st.one_of(
        st.text(max_size=30), st.lists(st.text(max_size=5), min_size=1, max_size=3),
        st.lists(st.integers(min_value=0, max_value=50_000), min_size=1, max_size=5)),
        "input": st.one_of(st.text(max_size=30), st.lists(st.text(max_size=5), min_size=1, max_size=3))}[shape])
    body.update(draw(st.fixed_dictionaries({}, optional=VALID)))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        current = body.get("messages")
        if isinstance(current, list) and current and all(isinstance(m, dict) for m in current) \
                and draw(st.booleans()):
            message = draw(st.sampled_from(current))
            message[draw(st.sampled_from(MESSAGE_FIELDS))] = draw(hostile)
        else:
            body[draw(st.sampled_from(FIELDS))] = draw(hostile)
    return body


raw_bodies = st.one_of(
    # The stdlib encoder: it writes integers beyond 64 bits and nesting beyond orjson's limits.
    bodies().map(lambda b: json.dumps(b, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    st.sampled_from([b"", b"{", b"[]", b"null", b'{"model": "m", "messages": [NaN]}', b"\xff\xfe",
                     b'{"model": "m"' + b"," * 10_000 + b"}"]),
)


@contextlib.contextmanager
def gateway_in_thread(tmp_path, **overrides) -> Iterator[tuple[str, str]]:
    """(gateway URL, API key of org 'acme' with a budget and rate limits), served from a thread."""
    ready: dict = {}
    started = threading.Event()
    stop: asyncio.Event | None = None
    loop_box: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        loop_box.append(asyncio.get_running_loop())
        settings_ = gateway_settings(tmp_path, **overrides)
        try:
            async with sim_pod("m") as url, running_gateway(settings_) as gw:
                await gw.create_org("acme", rpm_limit=1_000_000, tpm_limit=10**9)
                key = (await gw.create_key("acme"))["key"]
                await gw.register("m", url, input_price=0.5, output_price=1.5, max_tokens=32)
                r = await gw.admin.put("/admin/v1/budgets", json={"org": "acme", "usd": 5, "period": "daily"})
                assert r.status_code == 200, r.text
                ready.update(url=gw.url, key=key)
                started.set()
                await stop.wait()
        finally:
            started.set()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    started.wait(30)
    try:
        assert ready, "the gateway did not start"
        yield ready["url"], ready["key"]
    finally:
        loop_box[0].call_soon_threadsafe(stop.set)  # type: ignore[union-attr]
        thread.join(30)


def _check(response: httpx.Response) -> None:
    assert response.status_code in ALLOWED, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert error["type"]


def _reserved_zero(client: httpx.Client) -> None:
    import time

    deadline = time.monotonic() + 10
    while True:
        budget = client.get("/admin/v1/budgets/acme", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
        if all(b["reserved_usd"] == 0 for b in budget):
            return
        assert time.monotonic() < deadline, f"reservations left: {budget}"
        threading.Event().wait(0.05)


@pytest.mark.parametrize("limits", ["local", "redis"])
def test_hostile_inference_bodies(tmp_path, limits, request):
    overrides = {}
    if limits == "redis":
        overrides["redis_url"] = request.getfixturevalue("redis_url")
    with gateway_in_thread(tmp_path, **overrides) as (url, key), httpx.Client(base_url=url, timeout=30) as client:
        auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        seen: collections.Counter[int] = collections.Counter()

        @settings(max_examples=400, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(path=st.sampled_from(PATHS), raw=raw_bodies)
        def one(path: str, raw: bytes) -> None:
            response = client.post(path, content=raw, headers=auth)
            seen[response.status_code] += 1
            _check(response)

        one()
        assert seen[200] >= 10 and seen[400] >= 50, seen  # both served and refused bodies were explored
        _reserved_zero(client)
        # Still serving, and nothing is held: a normal request goes through.
        ok = client.post("/v1/chat/completions", headers=auth,
                         json={"model": "m", "messages": [{"role": "user", "content": "still there?"}]})
        assert ok.status_code == 200, ok.text
