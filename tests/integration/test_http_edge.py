"""The HTTP edge against slow, hostile and broken clients: raw sockets on a real gateway.

Every answer is OpenAI-shaped JSON that echoes nothing of the input; slow clients are cut
off by deadlines while normal clients keep being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway import appkeys
from gateway.app import create_app
from tests.fleet import ADMIN_TOKEN, gateway_settings, serve_app
from tests.support import eventually

SECRET = "s3cr3t-VALUE"


@dataclass
class Edge:
    url: str
    port: int
    app: web.Application


@contextlib.asynccontextmanager
async def edge(tmp_path, routes: dict | None = None, **overrides) -> AsyncIterator[Edge]:
    """A real gateway (no pods needed), optionally with extra routes for the test."""
    app = create_app(gateway_settings(tmp_path, **overrides), background=False)
    for path, handler in (routes or {}).items():
        app.router.add_get(path, handler)
    async with serve_app(app) as url:
        yield Edge(url=url, port=int(url.rsplit(":", 1)[1]), app=app)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict:
        assert self.headers["content-type"].startswith("application/json"), self
        return orjson.loads(self.body)["error"]


def parse(data: bytes) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return RawResponse(int(lines[0].split(" ")[1]), {k.lower(): v for k, v in headers.items()}, body)


async def exchange(port: int, data: bytes, *, timeout: float = 5.0) -> RawResponse:
    """Send raw bytes, read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return parse(await asyncio.wait_for(reader.read(), timeout))
    finally:
        writer.close()


def server_log(caplog) -> str:
    """What the gateway and aiohttp logged (the test's own HTTP client logs the URLs it calls)."""
    return "\n".join(caplog.handler.format(r) for r in caplog.records if r.name.startswith(("gateway", "aiohttp")))


def assert_openai_error(response: RawResponse, status: int, code: str) -> dict:
    assert response.status == status, response
    error = response.error()
    assert set(error) == {"message", "type", "code", "param"}
    assert error["code"] == code
    assert response.headers["x-request-id"]
    return error


# --- no plain-text 500s ------------------------------------------------------
# A connection error of the gateway's own (an unwrapped store or Redis failure) is not a client
# that went away: it gets its 500 too.
@pytest.mark.parametrize("exc_type", [KeyError, ConnectionRefusedError])
async def test_an_unexpected_exception_is_an_openai_500_with_the_request_id_and_a_logged_traceback(
        tmp_path, caplog, exc_type):
    async def broken(request: web.Request) -> web.Response:
        raise exc_type("a bug")

    caplog.set_level(logging.DEBUG)
    async with edge(tmp_path, routes={"/test/broken": broken}) as gw, httpx.AsyncClient() as client:
        r = await client.get(gw.url + "/test/broken?token=" + SECRET,
                             headers={"Authorization": f"Bearer {SECRET}", "X-Request-ID": "req-500"})
    assert r.status_code == 500
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["x-request-id"] == "req-500"
    error = r.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "internal_error"
    assert "req-500" in error["message"] and "a bug" not in error["message"]
    records = [rec for rec in caplog.records if rec.exc_info and rec.exc_info[0] is exc_type]
    assert len(records) == 1 and "req-500" in records[0].getMessage()
    assert SECRET not in server_log(caplog)


# --- requests aiohttp cannot parse ---------------------------------------------
@pytest.mark.parametrize("head", [
    f"GET /v1/status/healthz HTTP/1.1\r\nHost: x\r\nX-Big: {SECRET * 1000}\r\n\r\n",  # one huge field
    "GET /v1/status/healthz HTTP/1.1\r\nHost: x\r\n" + "".join(f"X-{i}: {SECRET}\r\n" for i in range(200)) + "\r\n",
    f"GET /{SECRET * 1000} HTTP/1.1\r\nHost: x\r\n\r\n",  # request line
], ids=["long-field", "too-many-fields", "long-request-line"])
async def test_oversized_heads_get_431_without_echo_or_log(tmp_path, caplog, capfd, head):
    caplog.set_level(logging.DEBUG)
    async with edge(tmp_path) as gw:
        response = await exchange(gw.port, head.encode())
        assert_openai_error(response, 431, "request_header_fields_too_large")
        assert SECRET.encode() not in response.body
        async with httpx.AsyncClient() as client:  # the server is fine afterwards
            assert (await client.get(gw.url + "/v1/status/healthz")).status_code == 200
    assert SECRET not in server_log(caplog)
    out = capfd.readouterr()
    assert SECRET not in out.out + out.err
    assert any(orjson.loads(line).get("status") == 431 for line in out.out.splitlines() if line.startswith("{"))


@pytest.mark.parametrize("data", [
    f"\x16\x03\x01{SECRET} / HTTP/1.1\r\n\r\n".encode(),  # TLS bytes on the HTTP port
    f"GET /v1/status/healthz HTTP/1.1\r\nHost: x\r\nBad Header{SECRET}\r\n\r\n".encode(),
    f"GET /v1/status/healthz HTTP/9.{SECRET}\r\n\r\n".encode(),
], ids=["not-http", "bad-header", "bad-version"])
async def test_unparsable_requests_get_an_openai_400_without_echo(tmp_path, caplog, data):
    caplog.set_level(logging.DEBUG)
    async with edge(tmp_path) as gw:
        response = await exchange(gw.port, data)
    error = assert_openai_error(response, 400, "malformed_request")
    assert error["type"] == "invalid_request_error"
    assert SECRET.encode() not in response.body
    assert SECRET not in server_log(caplog)


async def test_a_broken_chunked_body_is_an_openai_400(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with edge(tmp_path) as gw:
        response = await exchange(gw.port, (
            "POST /admin/v1/organizations HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {ADMIN_TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
            f"zz{SECRET}\r\n{SECRET}\r\n0\r\n\r\n").encode())
    assert_openai_error(response, 400, "malformed_request")
    assert SECRET.encode() not in response.body
    assert SECRET not in server_log(caplog)


# --- slow clients ----------------------------------------------------------------
async def slow_head(port: int, *, trickle: bool) -> tuple[float, bytes]:
    """Connect; send a request head slowly forever (or nothing); return (seconds until closed, answer)."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def dribble() -> None:
        writer.write(b"GET /v1/status/healthz HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(ConnectionError):
            for i in range(1000):
                await asyncio.sleep(0.05)
                writer.write(f"X-{i}: y\r\n".encode())
                await writer.drain()

    task = asyncio.create_task(dribble()) if trickle else None
    try:
        answer = await asyncio.wait_for(reader.read(), 10)
        return time.monotonic() - t0, answer
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        writer.close()


async def test_slow_headers_are_cut_off_while_normal_clients_are_served(tmp_path):
    async with edge(tmp_path, header_read_timeout_s=0.5) as gw:
        attackers = [asyncio.create_task(slow_head(gw.port, trickle=True)) for _ in range(30)]
        silent = [asyncio.create_task(slow_head(gw.port, trickle=False)) for _ in range(10)]
        async with httpx.AsyncClient() as client:
            for _ in range(20):  # served while the slow ones hang on
                assert (await client.get(gw.url + "/v1/status/healthz")).status_code == 200
        for elapsed, answer in await asyncio.gather(*attackers):
            assert 0.45 <= elapsed < 3.0, elapsed
            assert_openai_error(parse(answer), 408, "request_timeout")
        for elapsed, answer in await asyncio.gather(*silent):
            assert 0.45 <= elapsed < 3.0 and answer == b"", (elapsed, answer)


async def test_a_slow_body_gets_408_and_the_connection_is_closed(tmp_path):
    async with edge(tmp_path, body_read_timeout_s=1.0) as gw:
        t0 = time.monotonic()
        response = await exchange(gw.port, (
            "POST /admin/v1/organizations HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n"
            'Content-Length: 100\r\n\r\n{"name": "a').encode())
        # Closed right after the answer: no lingering wait for the rest of the body.
        assert 0.9 <= time.monotonic() - t0 < 1.8
        assert_openai_error(response, 408, "request_timeout")
        assert response.headers["connection"] == "close"
        async with httpx.AsyncClient() as client:  # nothing was created
            r = await client.get(gw.url + "/admin/v1/organizations", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            assert r.json() == []


async def test_a_body_in_its_own_segment_leaves_no_stale_header_deadline(tmp_path):
    """The last body bytes are not the start of a next head: the idle connection gets no 408 later."""
    async with edge(tmp_path, header_read_timeout_s=0.5, keepalive_timeout_s=5.0) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        body = b'{"name": "split"}'
        writer.write(("POST /admin/v1/organizations HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n").encode())
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(body)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert parse(head).status == 201
        await reader.readexactly(int(parse(head).headers["content-length"]))
        # Well past the header deadline, the connection is idle, open and usable.
        await asyncio.sleep(1.2)
        writer.write(b"GET /v1/status/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert parse(head).status == 200
        writer.close()


async def test_idle_keepalive_connections_are_closed_after_keepalive_timeout(tmp_path):
    async with edge(tmp_path, keepalive_timeout_s=0.5) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"GET /v1/status/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(parse(head).headers["content-length"])
        await reader.readexactly(length)
        t0 = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        assert 0.3 <= time.monotonic() - t0 < 3.0
        writer.close()


# --- the connection cap --------------------------------------------------------------
async def test_connections_beyond_max_connections_get_503_and_capacity_returns(tmp_path):
    healthz = b"GET /v1/status/healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    async with edge(tmp_path, max_connections=4, header_read_timeout_s=30) as gw:
        held = []
        for _ in range(4):  # 4 keep-alive connections, each served once and kept open
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(healthz)
            head = parse(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5))
            assert head.status == 200
            await reader.readexactly(int(head.headers["content-length"]))
            held.append((reader, writer))
        for request in (b"", healthz):  # a client that waits, and one that sends at once
            error = assert_openai_error(await exchange(gw.port, request), 503, "too_many_connections")
            assert error["type"] == "server_error"
        # The held connections still work...
        reader, writer = held[0]
        writer.write(b"GET /v1/status/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert parse(await asyncio.wait_for(reader.read(), 5)).status == 200
        # ...and once they are gone, new clients are served again.
        for _, w in held[1:]:
            w.close()

        async def served() -> bool:
            async with httpx.AsyncClient() as client:
                return (await client.get(gw.url + "/v1/status/healthz")).status_code == 200

        await eventually(served, what="a new connection served after others closed")


# --- /metrics ------------------------------------------------------------------------
async def test_metrics_token_is_required_when_configured(tmp_path):
    async with edge(tmp_path, metrics_token=SECRET) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": SECRET}):
            r = await client.get("/metrics", headers=headers)
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "invalid_metrics_token"
            assert SECRET not in r.text
        r = await client.get("/metrics", headers={"Authorization": f"Bearer {SECRET}"})
        assert r.status_code == 200
        assert any(f.name == "fleetgate_redis_degraded" for f in text_string_to_metric_families(r.text))
    async with edge(tmp_path) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        assert (await client.get("/metrics")).status_code == 200  # open when no token is set


async def test_a_slow_metrics_render_does_not_stall_the_event_loop(tmp_path):
    async with edge(tmp_path) as gw:
        m = gw.app[appkeys.METRICS]
        for i in range(20_000):  # a large registry: rendering takes a good fraction of a second
            m.child(m.tokens, f"model-{i}", "prompt").inc()
        t0 = time.perf_counter()
        m.render()  # what one scrape would block the loop for, were it rendered there
        render_s = time.perf_counter() - t0
        gc.collect()  # a collection of those 20,000 children must not land inside the measurement
        stalls: list[float] = []

        async def ticker() -> None:  # the gateway's loop is this test's loop: measure how late it wakes
            while True:
                t0 = time.perf_counter()
                await asyncio.sleep(0.001)
                stalls.append(time.perf_counter() - t0 - 0.001)

        def scrape() -> httpx.Response:  # the client runs in its own thread: the loop holds only the gateway
            return httpx.get(gw.url + "/metrics", timeout=60)

        ticking = asyncio.create_task(ticker())
        r = await asyncio.to_thread(scrape)
        ticking.cancel()
        assert r.status_code == 200 and "model-19999" in r.text
        assert len(stalls) > 10
        # Rendered on the event loop, one stall would last at least a whole render.
        assert max(stalls) < render_s / 2, (max(stalls), render_s)
