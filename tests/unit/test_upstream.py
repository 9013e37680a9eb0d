"""The upstream HTTP/1.1 client: bodies, streaming, keep-alive, stale retries, timeouts, TLS, errors.

Everything runs on loopback: the real simulator, small aiohttp apps and raw asyncio servers
for the misbehaving cases; a subset is repeated on uvloop (what the gateway runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import inspect
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import orjson
import pytest
import uvloop
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.errors import ConfigError
from gateway.upstream import (
    BUFFER_LIMIT,
    UpstreamConnectError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from opsctl.sim import SimConfig, create_sim_app
from tests.support import eventually, free_port

MODEL = "sim-model"
CHAT = "/v1/chat/completions"
RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def chat(stream: bool = False, max_tokens: int = 8) -> bytes:
    return orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hello there"}],
                         "max_tokens": max_tokens, "stream": stream})



@contextlib.asynccontextmanager
async def serve(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """Like tests.fleet.serve_app, with a listen backlog that takes 200 simultaneous connects."""
    port = free_port()
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024, ssl_context=ssl_context).start()
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def sim_pod(model: str, **fields: float) -> AsyncIterator[str]:
    async with serve(create_sim_app(SimConfig(model=model, **fields))) as url:
        yield url


@contextlib.asynccontextmanager
async def raw_server(handler: RawHandler) -> AsyncIterator[str]:
    """A hand-written HTTP server on a free port, for answers aiohttp would never send."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request off the wire (head + Content-Length body); None when the client closed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return head + await reader.readexactly(length)


@contextlib.asynccontextmanager
async def echo_app() -> AsyncIterator[tuple[str, list[int]]]:
    """Echoes path, X-Request-ID and body; records the id of each server-side connection."""
    connections: list[int] = []

    async def echo(request: web.Request) -> web.Response:
        connections.append(id(request.transport))
        return web.json_response({"path": request.path, "id": request.headers.get("X-Request-ID"),
                                   "body": (await request.read()).decode()})

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (b"alpha,", b"beta,", b"gamma"):
            await resp.write(part)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/chunked", chunked)
    app.router.add_post("/prefix/chunked", chunked)
    app.router.add_post("/{tail:.*}", echo)
    async with serve(app) as url:
        yield url, connections


async def running_requests(url: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(url + "/metrics")).text
    line = next(line for line in text.splitlines() if line.startswith("vllm:num_requests_running{"))
    return float(line.rsplit(" ", 1)[1])


# --- the simulator ----------------------------------------------------------------------------

async def test_non_streaming_chat_returns_the_json_body() -> None:
    async with sim_pod(MODEL) as url:
        async with UpstreamPool() as pool:
            resp = await pool.request(url, CHAT, chat(), [("X-Request-ID", "r1")])
            body = orjson.loads(await resp.read())
            resp.release()
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers["Content-Type"] == resp.headers["CONTENT-TYPE"]
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["usage"]["completion_tokens"] == 8


async def test_streaming_yields_sse_data_as_it_is_generated() -> None:
    async with sim_pod(MODEL, ttft_ms=50, tokens_per_s=50) as url:
        async with UpstreamPool() as pool:
            t0 = time.perf_counter()
            resp = await pool.request(url, CHAT, chat(stream=True, max_tokens=10))
            arrivals: list[tuple[float, bytes]] = []
            async for chunk in resp.iter_chunks():
                arrivals.append((time.perf_counter() - t0, chunk))
            resp.release()
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    text = b"".join(chunk for _, chunk in arrivals)
    assert text.count(b"data: ") >= 11 and text.rstrip().endswith(b"data: [DONE]")
    assert len(arrivals) >= 8, "each token should arrive as its own piece"
    assert arrivals[0][0] < 0.15, "the first token must not wait for the rest"
    assert arrivals[-1][0] - arrivals[0][0] > 0.12, "10 tokens at 50/s are spread over ~0.2 s"


async def test_close_mid_stream_makes_the_pod_stop_generating() -> None:
    async with sim_pod(MODEL, ttft_ms=10, tokens_per_s=20) as url:
        async with UpstreamPool() as pool:
            resp = await pool.request(url, CHAT, chat(stream=True, max_tokens=200))
            chunks = resp.iter_chunks()
            assert (await chunks.__anext__()).startswith(b"data: ")
            assert await running_requests(url) == 1
            resp.close()
            resp.close()  # idempotent
            resp.release()

            async def stopped() -> bool:
                return await running_requests(url) == 0

            await eventually(stopped, what="the simulator to see the disconnect")
            with pytest.raises(UpstreamProtocolError):
                await resp.read()


async def test_two_hundred_concurrent_requests_to_the_simulator() -> None:
    async with sim_pod(MODEL) as url:
        async with UpstreamPool() as pool:
            async def one(i: int) -> dict:
                async with await pool.request(url, CHAT, chat(max_tokens=1 + i % 7)) as resp:
                    assert resp.status == 200
                    return orjson.loads(await resp.read())

            bodies = await asyncio.gather(*(one(i) for i in range(200)))
    assert [b["usage"]["completion_tokens"] for b in bodies] == [1 + i % 7 for i in range(200)]


# --- bodies, keep-alive, prefixes -------------------------------------------------------------

async def test_keep_alive_reuses_one_connection() -> None:
    async with echo_app() as (url, connections):
        async with UpstreamPool() as pool:
            for i in range(5):
                resp = await pool.request(url, "/v1/x", b'{"n": %d}' % i, [("X-Request-ID", f"id-{i}")])
                assert orjson.loads(await resp.read())["id"] == f"id-{i}"
                resp.release()
                resp.release()  # idempotent
    assert len(set(connections)) == 1 and len(connections) == 5
    assert (pool.stats.opened, pool.stats.reused) == (1, 4)


async def test_chunked_and_content_length_bodies_and_url_prefix() -> None:
    async with echo_app() as (url, _):
        async with UpstreamPool() as pool:
            async with await pool.request(url + "/prefix/", "/chunked", b"{}") as resp:
                assert resp.headers.get("Transfer-Encoding") == "chunked"
                assert await resp.read() == b"alpha,beta,gamma"
            async with await pool.request(url, "/chunked", b"{}") as resp:
                pieces = [piece async for piece in resp.iter_chunks()]
                assert b"".join(pieces) == b"alpha,beta,gamma"
            async with await pool.request(url + "/prefix", "/v1/chat/completions", b'{"a": 1}') as resp:
                assert int(resp.headers["Content-Length"]) > 0
                assert orjson.loads(await resp.read()) == {
                    "path": "/prefix/v1/chat/completions", "id": None, "body": '{"a": 1}'}
    assert pool.stats.opened == 1


async def test_two_hundred_concurrent_requests_get_their_own_answers() -> None:
    async with echo_app() as (url, connections):
        async with UpstreamPool(max_idle_per_host=16) as pool:
            async def one(i: int) -> None:
                resp = await pool.request(url, f"/n/{i}", b'{"i": %d}' % i, [("X-Request-ID", str(i))])
                body = orjson.loads(await resp.read())
                resp.release()
                assert body == {"path": f"/n/{i}", "id": str(i), "body": '{"i": %d}' % i}

            for _ in range(2):
                await asyncio.gather(*(one(i) for i in range(200)))
    assert len(connections) == 400
    assert len(set(connections)) <= 200 + 200 - 16, "the second round must reuse the kept connections"


async def test_idle_connections_expire_after_the_ttl() -> None:
    async with echo_app() as (url, connections):
        async with UpstreamPool(idle_ttl_s=0.1) as pool:
            for _ in range(2):
                async with await pool.request(url, "/x", b"{}") as resp:
                    await resp.read()
                await asyncio.sleep(0.25)
    assert pool.stats.opened == 2 and len(set(connections)) == 2


async def test_flow_control_pauses_the_pod_while_the_consumer_is_behind() -> None:
    total, piece = 48 << 20, 64 << 10
    finished = asyncio.Event()

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        block = b"x" * piece
        for _ in range(total // piece):
            await resp.write(block)
        await resp.write_eof()
        finished.set()
        return resp

    app = web.Application()
    app.router.add_post("/big", big)
    async with serve(app) as url:
        async with UpstreamPool() as pool:
            resp = await pool.request(url, "/big", b"{}")
            chunks = resp.iter_chunks()
            received = len(await chunks.__anext__())
            await asyncio.sleep(0.3)  # a slow client: the pod must be held back, not buffered
            assert not finished.is_set(), "without flow control the whole body would be buffered"
            async for chunk in chunks:
                assert len(chunk) <= BUFFER_LIMIT + (256 << 10)  # + at most one socket read
                received += len(chunk)
            resp.release()
    assert received == total and finished.is_set()


# --- stale connections, errors, timeouts ------------------------------------------------------

async def test_stale_keep_alive_connection_is_retried_on_a_fresh_one() -> None:
    """The server answers one request per connection, then drops it when the next one arrives."""
    seen: list[int] = []

    async def one_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(id(writer))
        if await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}")
            await writer.drain()
            await read_request(reader)  # the client reuses the connection: close without an answer
        writer.close()

    async with raw_server(one_per_connection) as url:
        async with UpstreamPool() as pool:
            for _ in range(3):
                async with await pool.request(url, "/x", b"{}") as resp:
                    assert (resp.status, await resp.read()) == (200, b"{}")
    assert pool.stats.stale_retries == 2 and pool.stats.opened == 3 and len(seen) == 3


async def test_server_closing_idle_connections_between_requests_is_invisible() -> None:
    async def answer_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
        await writer.drain()
        writer.close()  # keep-alive was promised, yet the connection goes

    async with raw_server(answer_and_close) as url:
        async with UpstreamPool() as pool:
            for _ in range(5):
                async with await pool.request(url, "/x", b"{}") as resp:
                    assert await resp.read() == b"done"
                await asyncio.sleep(0.01)
    assert pool.stats.opened == 5


async def test_connection_close_answers_and_interim_responses() -> None:
    """`Connection: close` is honoured (never pooled); a 100 Continue before the answer is skipped."""
    closed_by_client: list[bool] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        closed_by_client.append(await reader.read() == b"")  # the client, not us, hangs up
        writer.close()

    async with raw_server(answer) as url:
        async with UpstreamPool() as pool:
            for _ in range(2):
                async with await pool.request(url, "/x", b"{}") as resp:
                    assert (resp.status, await resp.read()) == (200, b"ok")

            async def both_closed() -> bool:
                return closed_by_client == [True, True]

            await eventually(both_closed, what="the client to close both connections")
    assert pool.stats.opened == 2 and pool.stats.reused == 0


async def test_cancelled_request_closes_its_connection() -> None:
    """A caller cancelled while waiting (the gateway's client went away) hangs up on the pod."""
    accepted, hung_up = asyncio.Event(), asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        accepted.set()
        if await reader.read() == b"":
            hung_up.set()
        writer.close()

    async with raw_server(silent) as url:
        async with UpstreamPool() as pool:
            task = asyncio.ensure_future(pool.request(url, "/x", b"{}"))
            await asyncio.wait_for(accepted.wait(), 5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(hung_up.wait(), 5)
            assert not pool._all


async def test_connection_refused_fails_fast_and_unknown_hosts_fail() -> None:
    pool = UpstreamPool()
    t0 = time.perf_counter()
    try:
        with pytest.raises(UpstreamConnectError) as info:
            await pool.request(f"http://127.0.0.1:{free_port()}", "/x", b"{}")
        assert time.perf_counter() - t0 < 1.0
        assert info.value.status == 502 and "ConnectionRefusedError" in info.value.message
        with pytest.raises(UpstreamConnectError, match="gaierror"):
            await pool.request("http://no-such-host.invalid:8000", "/x", b"{}")
    finally:
        await pool.close()


async def test_silent_server_times_out_after_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, reads, never answers
        writer.close()

    async with raw_server(silent) as url:
        pool = UpstreamPool(read_timeout_s=0.3)
        t0 = time.perf_counter()
        try:
            with pytest.raises(UpstreamTimeoutError) as info:
                await pool.request(url, "/x", b"{}")
        finally:
            await pool.close()
    assert 0.3 <= time.perf_counter() - t0 < 1.5
    assert info.value.status == 504


async def test_stalled_body_times_out_but_slow_steady_data_does_not() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(4):  # 0.4 s of data, never 0.25 s of silence
            await asyncio.sleep(0.1)
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
        await reader.read()  # then silence until the client gives up
        writer.close()

    async with raw_server(trickle) as url:
        async with UpstreamPool(read_timeout_s=0.25) as pool:
            resp = await pool.request(url, "/x", b"{}")
            received = b""
            with pytest.raises(UpstreamTimeoutError):
                async for chunk in resp.iter_chunks():
                    received += chunk
            resp.release()
    assert received == b"xxxx"


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
], ids=["content-length", "chunked"])
async def test_truncated_body_is_a_protocol_error(answer: bytes) -> None:
    async def truncate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()

    async with raw_server(truncate) as url:
        async with UpstreamPool() as pool:
            resp = await pool.request(url, "/x", b"{}")
            with pytest.raises(UpstreamProtocolError, match="mid-response"):
                await resp.read()
            resp.release()
    assert pool.stats.opened == 1 and not pool._all


async def test_malformed_response_and_body_until_close() -> None:
    answers = iter([b"SPDY/9 banana\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\nuntil the close"])

    async def odd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(next(answers))
        await writer.drain()
        writer.close()

    async with raw_server(odd) as url:
        async with UpstreamPool() as pool:
            with pytest.raises(UpstreamProtocolError, match="malformed"):
                await pool.request(url, "/x", b"{}")
            async with await pool.request(url, "/x", b"{}") as resp:
                assert await resp.read() == b"until the close"


async def test_bad_input_is_rejected_before_anything_is_sent() -> None:
    async with UpstreamPool() as pool:
        for url in ("ftp://127.0.0.1:8000", "127.0.0.1:8000", "http://", "http://h:99999"):
            with pytest.raises(UpstreamConnectError, match="URL"):
                await pool.request(url, "/x", b"{}")
        with pytest.raises(ValueError, match="X-Request-ID"):
            await pool.request("http://127.0.0.1:1", "/x", b"{}", [("X-Request-ID", "a\r\nEvil: 1")])
        with pytest.raises(ValueError, match="path"):
            await pool.request("http://127.0.0.1:1", "x y", b"{}")
    with pytest.raises(UpstreamConnectError, match="closed"):
        await pool.request("http://127.0.0.1:1", "/x", b"{}")
    assert pool.stats.opened == 0
    for bad in ({"read_timeout_s": 0}, {"connect_timeout_s": float("nan")}, {"max_idle_per_host": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            UpstreamPool(**bad)


async def test_pool_close_closes_connections_in_use_and_idle() -> None:
    async with sim_pod(MODEL, ttft_ms=10, tokens_per_s=20) as url:
        pool = UpstreamPool()
        idle = await pool.request(url, CHAT, chat())
        await idle.read()
        idle.release()
        busy = await pool.request(url, CHAT, chat(stream=True, max_tokens=200))
        await pool.close()
        assert not pool._all
        with pytest.raises(UpstreamProtocolError):
            await busy.read()
        busy.release()

        async def stopped() -> bool:
            return await running_requests(url) == 0

        await eventually(stopped, what="the simulator to see the pool close")


# --- TLS ----------------------------------------------------------------------------------------

def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key, written as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1)).add_extension(san, critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return tmp_path / "cert.pem", tmp_path / "key.pem"


async def test_https_endpoint_with_a_trusted_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    async with serve(_tls_app(), server_ctx) as url:
        trusted = UpstreamPool(ssl_context=ssl.create_default_context(cafile=str(cert)))
        default = UpstreamPool()
        try:
            for _ in range(2):
                async with await trusted.request(url, "/tls", b'{"x": 1}') as resp:
                    assert (resp.status, await resp.read()) == (200, b'secure {"x": 1}')
            assert (trusted.stats.opened, trusted.stats.reused) == (1, 1)
            with pytest.raises(UpstreamConnectError, match="SSL"):  # self-signed: not trusted by default
                await default.request(url, "/tls", b"{}")
        finally:
            await trusted.close()
            await default.close()


def _tls_app() -> web.Application:
    async def tls(request: web.Request) -> web.Response:
        return web.Response(body=b"secure " + await request.read())

    app = web.Application()
    app.router.add_post("/tls", tls)
    return app


# --- the same behaviour on uvloop (what the gateway runs) --------------------------------------

@pytest.mark.parametrize(
    "scenario",
    [test_non_streaming_chat_returns_the_json_body, test_streaming_yields_sse_data_as_it_is_generated,
     test_close_mid_stream_makes_the_pod_stop_generating, test_keep_alive_reuses_one_connection,
     test_two_hundred_concurrent_requests_get_their_own_answers, test_flow_control_pauses_the_pod_while_the_consumer_is_behind,
     test_stale_keep_alive_connection_is_retried_on_a_fresh_one, test_connection_refused_fails_fast_and_unknown_hosts_fail,
     test_silent_server_times_out_after_read_timeout, test_stalled_body_times_out_but_slow_steady_data_does_not,
     test_https_endpoint_with_a_trusted_certificate],
    ids=lambda scenario: scenario.__name__.removeprefix("test_"),
)
def test_on_uvloop(scenario: Callable[..., Awaitable[None]], tmp_path: Path) -> None:
    kwargs = {"tmp_path": tmp_path} if "tmp_path" in inspect.signature(scenario).parameters else {}
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario(**kwargs))
