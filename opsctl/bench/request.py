"""One benchmark request: body encoded once, sent many times, outcome classified cheaply.

Non-streaming responses are read but not parsed; streams are parsed only up to the first
content chunk (TTFT), then drained and checked for the closing `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
import orjson

from opsctl.bench.config import BenchConfig, Endpoint

DONE_MARKER = b"[DONE]"


class RequestFailed(Exception):
    """A request that did not succeed; `kind` is the error bucket (e.g. `http_429`, `timeout`)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True)
class PreparedRequest:
    """Everything constant across requests of a run, built once."""

    url: str
    body: bytes
    headers: dict[str, str]
    stream: bool
    endpoint: Endpoint


def build_body(config: BenchConfig) -> dict:
    """The OpenAI-shaped request body for the configured endpoint."""
    if config.endpoint is Endpoint.embeddings:
        return {"model": config.model, "input": config.prompt}
    body: dict = {"model": config.model, "max_tokens": config.max_tokens}
    if config.endpoint is Endpoint.chat:
        body["messages"] = [{"role": "user", "content": config.prompt}]
    else:
        body["prompt"] = config.prompt
    if config.stream:
        body["stream"] = True
    return body


def prepare(config: BenchConfig) -> PreparedRequest:
    headers = {"Content-Type": "application/json"}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    return PreparedRequest(
        url=config.target_url,
        body=orjson.dumps(build_body(config)),
        headers=headers,
        stream=config.stream,
        endpoint=config.endpoint,
    )


def _has_content(chunk: dict, endpoint: Endpoint) -> bool:
    choices = chunk.get("choices") or ()
    for choice in choices:
        if endpoint is Endpoint.chat:
            if (choice.get("delta") or {}).get("content"):
                return True
        elif choice.get("text"):
            return True
    return False


async def _read_stream(resp: aiohttp.ClientResponse, endpoint: Endpoint) -> float | None:
    """Read an SSE body; return the perf_counter time of the first content chunk (None if none)."""
    first: float | None = None
    content = resp.content
    while first is None:
        line = await content.readline()
        if not line:
            raise RequestFailed("stream_incomplete")
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == DONE_MARKER:
            return None
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError as e:
            raise RequestFailed("bad_stream_chunk") from e
        if "error" in chunk:
            raise RequestFailed("stream_error")
        if _has_content(chunk, endpoint):
            first = time.perf_counter()
    rest = await content.read()
    if DONE_MARKER not in rest[-64:]:
        raise RequestFailed("stream_incomplete")
    return first


async def send(session: aiohttp.ClientSession, req: PreparedRequest) -> float | None:
    """Send one request and consume its whole response.

    Returns:
        The perf_counter time of the first content chunk for streams, else None.

    Raises:
        RequestFailed: with the error bucket for any non-2xx status or transport failure.
    """
    try:
        async with session.post(req.url, data=req.body, headers=req.headers) as resp:
            if resp.status >= 300:
                await resp.read()
                raise RequestFailed(f"http_{resp.status}")
            if req.stream:
                return await _read_stream(resp, req.endpoint)
            await resp.read()
            return None
    except asyncio.TimeoutError as e:
        raise RequestFailed("timeout") from e
    except aiohttp.ClientConnectorError as e:
        raise RequestFailed("connect_error") from e
    except aiohttp.ServerDisconnectedError as e:
        raise RequestFailed("disconnected") from e
    except aiohttp.ClientPayloadError as e:
        raise RequestFailed("payload_error") from e
    except aiohttp.ClientError as e:
        raise RequestFailed(type(e).__name__) from e
