"""Smoke test of one endpoint: a few real requests from the gateway straight to its pod, whatever its status.

A rollout registers a new release disabled and smoke-tests it before it gets any traffic, so the
requests bypass routing; they go through the data plane's own upstream pool, are never billed
and leave no usage row: the verdict is the answer itself.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from dataclasses import asdict, dataclass

import orjson

from gateway.proxy.streaming import GarbageStream, SseRelay
from gateway.upstream import (
    UpstreamConnectError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamSaturated,
    UpstreamTimeoutError,
)

SMOKE_KINDS = ("chat", "completions", "embeddings")
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings"}
MAX_TOKENS = 8
MAX_ERROR = 300  # characters of a pod's error message kept in a result
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class SmokeResult:
    """One smoke request: `status` None when no HTTP answer arrived; `error` None when it passed."""

    status: int | None
    latency_ms: float
    ttft_ms: float | None = None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == 200 and self.error is None

    def to_dict(self) -> dict:
        return asdict(self)


def default_kind(metadata: dict | None) -> str:
    """The kind of request a model answers: its registry metadata `kind` when valid, else chat."""
    kind = (metadata or {}).get("kind")
    return kind if kind in SMOKE_KINDS else "chat"


def smoke_payload(kind: str, served_model: str) -> bytes:
    """A short request of `kind`; chat and completions are streamed so the time to first token shows."""
    if kind == "embeddings":
        return orjson.dumps({"model": served_model, "input": "Fleetgate smoke test"})
    body: dict = {"model": served_model, "max_tokens": MAX_TOKENS, "stream": True,
                  "stream_options": {"include_usage": True}}
    if kind == "chat":
        body["messages"] = [{"role": "user", "content": "Say hello."}]
    else:
        body["prompt"] = "Say hello."
    return orjson.dumps(body)


async def smoke_test(pool: UpstreamPool, url: str, served_model: str, *, kind: str, requests: int,
                     timeout_s: float) -> list[SmokeResult]:
    """Send `requests` requests of `kind` to the endpoint at `url`, one after the other.

    Args:
        pool: the data plane's upstream pool.
        url: the endpoint's base URL, as in the registry.
        served_model: the name the pod serves the model under (what the prober found).
        kind: one of SMOKE_KINDS.
        requests: how many.
        timeout_s: limit of each request, from sending to the last byte.
    """
    payload = smoke_payload(kind, served_model)
    return [await _one(pool, url, PATHS[kind], payload, kind, timeout_s) for _ in range(requests)]


async def _one(pool: UpstreamPool, url: str, path: str, payload: bytes, kind: str, timeout_s: float) -> SmokeResult:
    started = time.perf_counter()
    status: int | None = None
    ttft_s: float | None = None
    try:
        async with asyncio.timeout(timeout_s):
            resp = await pool.request(url, path, payload, (("X-Request-ID", f"smoke-{uuid.uuid4().hex}"),))
            status = resp.status
            try:
                if status != 200:
                    error: str | None = f"HTTP {status}: {_message(await resp.read())}"
                elif kind == "embeddings":
                    error = _embeddings_error(await resp.read())
                else:
                    ttft_s, error = await _read_stream(resp, started)
            finally:
                resp.release()
    except TimeoutError:
        error = f"no complete answer within {timeout_s:g} s"
    except UpstreamSaturated:
        error = "no free connection to the endpoint (upstream_max_connections_per_host)"
    except (UpstreamConnectError, UpstreamProtocolError, UpstreamTimeoutError) as e:
        error = e.message  # says what failed; never the URL
    except GarbageStream as e:
        error = f"the answer is not a well-formed event stream ({e})"
    latency_ms = (time.perf_counter() - started) * 1000.0
    return SmokeResult(status=status, latency_ms=round(latency_ms, 3),
                       ttft_ms=round(ttft_s * 1000.0, 3) if ttft_s is not None else None, error=error)


async def _read_stream(resp: UpstreamResponse, started: float) -> tuple[float | None, str | None]:
    """(seconds to the first event, error or None) of a streamed completion read to its end.

    Raises:
        GarbageStream: an event that is not SSE carrying a JSON object.
    """
    content_type = resp.headers.get("Content-Type", "")
    if not content_type.startswith("text/event-stream"):
        await resp.read()
        return None, f"expected an event stream, got content type {_clean(content_type[:60])!r}"
    relay = SseRelay(client_wants_usage=True)
    ttft_s = None
    async for chunk in resp.iter_chunks():
        if relay.feed(chunk) and ttft_s is None:
            ttft_s = time.perf_counter() - started
    relay.flush()
    if not relay.content_events:
        return ttft_s, "the stream carried no completion"
    if not relay.done:
        return ttft_s, "the stream ended without [DONE]"
    return ttft_s, None


def _embeddings_error(data: bytes) -> str | None:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "the answer is not JSON"
    items = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items or not all(
            isinstance(item, dict) and isinstance(item.get("embedding"), list | str) and item["embedding"]
            for item in items):
        return "the answer has no embeddings"
    return None


def _message(data: bytes) -> str:
    """The pod's error message (OpenAI shape), cut short, or a placeholder."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "(no JSON error body)"
    inner = doc.get("error") if isinstance(doc, dict) else None
    inner = inner if isinstance(inner, dict) else doc if isinstance(doc, dict) else {}
    message = inner.get("message")
    return _clean(message[:MAX_ERROR]) if isinstance(message, str) and message else "(no error message)"


def _clean(text: str) -> str:
    return _CONTROL.sub(" ", text)
