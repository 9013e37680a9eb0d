"""FastRedis against a real Redis: replies, errors, pipelining, cancellation, outages, AUTH/SELECT."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import uvloop
from redis.exceptions import (
    AuthenticationError,
    ConnectionError,  # noqa: A004 - redis-py's, what FastRedis must raise
    DataError,
    InvalidResponse,
    NoScriptError,
    ResponseError,
    TimeoutError,  # noqa: A004
)

from gateway.errors import InvalidRequest
from gateway.redis.client import FastRedis
from tests.support import free_port, port_open, wait_for

pytestmark = pytest.mark.redis

PASSWORD = "s3cret-pw"


@pytest.fixture
async def fast(redis_url):
    client = FastRedis.from_url(redis_url, timeout_s=2.0)
    yield client
    await client.aclose()


@asynccontextmanager
async def _silent_server() -> AsyncIterator[tuple[int, list[asyncio.StreamWriter]]]:
    """A TCP server that accepts connections and never answers: (port, accepted connections)."""
    accepted: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()  # until the client goes away

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def _scripted_server(replies: list[bytes]) -> AsyncIterator[list[asyncio.StreamWriter]]:
    """Answers each read with the next reply, one byte per write: replies arrive in fragments."""
    accepted: list[asyncio.StreamWriter] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        while replies and await reader.read(65536):
            for i in range(len(reply := replies.pop(0))):
                writer.write(reply[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0)

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield accepted, server.sockets[0].getsockname()[1]
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.fixture
async def silent_server():
    async with _silent_server() as server:
        yield server


@pytest.fixture(scope="module")
def password_redis(tmp_path_factory):
    """A private redis-server that requires a password, on TCP and a unix socket."""
    base = tmp_path_factory.mktemp("redis-auth")
    port, sock = free_port(), base / "redis.sock"
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass", PASSWORD,
         "--unixsocket", str(sock), "--save", "", "--appendonly", "no", "--dir", str(base)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: port_open(port) and sock.exists(), timeout=10, what="password redis-server")
        yield port, sock
    finally:
        proc.terminate()
        proc.wait(10)


# --- replies ---------------------------------------------------------------------------------

async def test_every_reply_type(fast):
    assert await fast.ping() is True
    assert await fast.execute("SET", "k", "v") == b"OK"  # simple string
    assert await fast.execute("GET", "k") == b"v"  # bulk string
    assert await fast.execute("GET", "missing") is None  # null bulk string
    assert await fast.execute("SET", "empty", "") == b"OK"
    assert await fast.execute("GET", "empty") == b""
    assert await fast.execute("INCRBY", "n", -42) == -42  # integer
    assert await fast.execute("INCRBYFLOAT", "f", 1.5) == b"1.5"
    assert await fast.execute("RPUSH", "l", "a", b"b\r\nc", 3) == 3
    assert await fast.execute("LRANGE", "l", 0, -1) == [b"a", b"b\r\nc", b"3"]  # array, binary safe
    assert await fast.execute("LRANGE", "nolist", 0, -1) == []  # empty array
    assert await fast.execute("BLPOP", "nolist", "0.01") is None  # null array
    nested = await fast.execute("EVAL", "return {1, {2, {'x', {}}}, 'y', -7}", 0)
    assert nested == [1, [2, [b"x", []]], b"y", -7]


async def test_error_inside_an_array_is_returned_in_place(fast):
    reply = await fast.execute("EVAL", "return {1, redis.error_reply('BAD thing'), 3}", 0)
    assert reply[0] == 1 and reply[2] == 3
    assert isinstance(reply[1], ResponseError) and str(reply[1]) == "BAD thing"


async def test_non_ascii_and_large_values_round_trip(fast):
    assert await fast.execute("SET", "é", "héllo ✓") == b"OK"
    assert await fast.execute("GET", "é") == "héllo ✓".encode()
    big = bytes(range(256)) * 8_192  # 2 MiB: arrives in many reads
    await fast.execute("SET", "big", big)
    assert await fast.execute("GET", "big") == big
    many = [str(i) * 50 for i in range(5_000)]
    await fast.execute("RPUSH", "many", *many)
    assert await fast.execute("LRANGE", "many", 0, -1) == [m.encode() for m in many]


async def test_scripts_and_noscript(fast, redis_url):
    sha = await fast.script_load("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}")
    assert len(sha) == 40
    assert await fast.evalsha(sha, 1, "key", "arg", 41) == [b"key", b"arg", 42]
    await fast.execute("SCRIPT", "FLUSH")
    with pytest.raises(NoScriptError):
        await fast.evalsha(sha, 1, "key", "arg", 1)
    assert await fast.script_load("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}") == sha
    assert await fast.evalsha(sha, 1, "k2", "a", 1) == [b"k2", b"a", 2]


async def test_error_replies_are_redis_py_errors(fast):
    with pytest.raises(ResponseError, match="unknown command"):
        await fast.execute("NOSUCHCOMMAND", "x")
    await fast.execute("SET", "s", "v")
    with pytest.raises(ResponseError, match="^WRONGTYPE"):
        await fast.execute("LPUSH", "s", "x")
    with pytest.raises(ResponseError, match="not an integer"):
        await fast.execute("INCR", "s")
    assert await fast.execute("GET", "s") == b"v"  # the connection is fine after errors


@pytest.mark.parametrize("bad", [None, True, object(), ["list"]])
async def test_bad_arguments_are_refused_before_sending(fast, bad):
    with pytest.raises(DataError):
        await fast.execute("SET", "k", bad)
    assert await fast.execute("GET", "k") is None  # nothing was sent


async def test_empty_command_is_refused(fast):
    with pytest.raises(DataError):
        await fast.execute()
    assert await fast.ping()


@pytest.mark.parametrize(
    ("url", "kwargs"),
    [("http://127.0.0.1:6379", {}), ("redis://127.0.0.1:notaport/0", {}), ("redis://127.0.0.1/0", {"timeout_s": 0}),
     ("redis://127.0.0.1/0", {"connect_timeout_s": -1})],
)
def test_bad_settings_are_refused(url, kwargs):
    with pytest.raises(InvalidRequest):
        FastRedis.from_url(url, **kwargs)


async def test_replies_arriving_in_fragments_are_parsed():
    replies = [b"*4\r\n$5\r\nhel\r\n\r\n*2\r\n:-1\r\n$-1\r\n+OK\r\n*-1\r\n", b"-ERR bad\r\n", b":12345\r\n"]
    async with _scripted_server(replies) as (_, port), FastRedis.from_url(f"redis://127.0.0.1:{port}/0") as client:
        assert await client.execute("ANY") == [b"hel\r\n", [-1, None], b"OK", None]
        with pytest.raises(ResponseError, match="ERR bad"):
            await client.execute("ANY")
        assert await client.execute("ANY") == 12345


async def test_garbage_from_the_server_drops_the_connection():
    async with _scripted_server([b"?what\r\n", b"+PONG\r\n"]) as (accepted, port):
        async with FastRedis.from_url(f"redis://127.0.0.1:{port}/0") as client:
            with pytest.raises(InvalidResponse, match="Protocol error"):
                await client.execute("PING")
            assert await client.ping()  # on a new connection
            assert len(accepted) == 2


# --- pipelining and cancellation -------------------------------------------------------------

async def test_thousand_concurrent_commands_get_their_own_replies(fast):
    async def one(i: int) -> object:
        if i % 10 == 3:
            return await fast.execute("INCR", "not-a-number-key-" + "x" * i, "extra-arg")  # an error reply
        return await fast.execute("ECHO", f"value-{i}")

    results = await asyncio.gather(*(one(i) for i in range(1_000)), return_exceptions=True)
    for i, result in enumerate(results):
        if i % 10 == 3:
            assert isinstance(result, ResponseError), (i, result)
        else:
            assert result == f"value-{i}".encode(), (i, result)
    counters = await asyncio.gather(*(fast.execute("INCR", "counter") for _ in range(1_000)))
    assert counters == list(range(1, 1_001))


async def test_concurrent_first_calls_share_one_connection(redis_url):
    async with FastRedis.from_url(redis_url) as client:
        ids = await asyncio.gather(*(client.execute("CLIENT", "ID") for _ in range(50)))
        assert len(set(ids)) == 1


async def test_cancelled_caller_reply_is_consumed_and_dropped(fast, redis_url):
    blocked = asyncio.ensure_future(fast.execute("BLPOP", "queue", "1"))  # answered only on a push
    behind = asyncio.ensure_future(fast.execute("ECHO", "behind"))  # pipelined after it
    await asyncio.sleep(0.05)  # let both be written and BLPOP block in Redis
    blocked.cancel()
    async with FastRedis.from_url(redis_url) as other:
        assert await other.execute("LPUSH", "queue", "item") == 1
    assert await behind == b"behind"  # not BLPOP's reply
    assert blocked.cancelled()
    assert await fast.execute("ECHO", "after") == b"after"
    assert await fast.execute("LLEN", "queue") == 0  # the cancelled BLPOP did pop the item


async def test_many_cancellations_keep_fifo_integrity(fast):
    tasks = [asyncio.ensure_future(fast.execute("ECHO", f"v{i}")) for i in range(300)]
    for task in tasks[::3]:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for i, result in enumerate(results):
        if i % 3 == 0:
            assert isinstance(result, asyncio.CancelledError)
        else:
            assert result == f"v{i}".encode()
    assert await asyncio.wait_for(fast.execute("ECHO", "next"), 1) == b"next"


async def test_wait_for_timeout_on_caller_side_keeps_connection_usable(fast):
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(fast.execute("BLPOP", "q", "0.2"), 0.05)
    assert await fast.execute("ECHO", "x") == b"x"  # waited behind BLPOP, got its own reply


# --- failures ---------------------------------------------------------------------------------

async def test_stopped_server_fails_fast_then_recovers(redis_server, redis_url):
    client = FastRedis.from_url(redis_url, timeout_s=5.0)
    try:
        assert await client.ping()
        pending = asyncio.ensure_future(client.execute("BLPOP", "q", "4"))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await asyncio.to_thread(redis_server.stop)
        with pytest.raises(ConnectionError):
            await pending  # in flight when the server went away
        with pytest.raises(ConnectionError):
            await client.ping()  # reconnect refused
        assert time.monotonic() - started < 1.0
        await asyncio.to_thread(redis_server.start)
        assert await client.ping()
        assert await client.execute("SET", "back", 1) == b"OK"
    finally:
        await client.aclose()


async def test_refused_connection_is_connection_error():
    async with FastRedis.from_url(f"redis://127.0.0.1:{free_port()}/0") as client:
        started = time.monotonic()
        with pytest.raises(ConnectionError, match="Error connecting"):
            await client.ping()
        assert time.monotonic() - started < 1.0


async def test_silent_server_times_out_every_pending_command_and_reconnects(silent_server):
    port, accepted = silent_server
    async with FastRedis.from_url(f"redis://127.0.0.1:{port}/0", timeout_s=0.1) as client:
        started = time.monotonic()
        results = await asyncio.gather(*(client.ping() for _ in range(5)), return_exceptions=True)
        elapsed = time.monotonic() - started
        assert all(isinstance(r, TimeoutError) for r in results), results
        assert 0.09 <= elapsed < 0.4
        with pytest.raises(TimeoutError):
            await client.execute("GET", "k")
        assert len(accepted) == 2  # the stuck connection was dropped; the next call reconnected


async def test_silent_server_during_handshake_is_bounded(silent_server):
    port, _ = silent_server  # SELECT never answered: connect_timeout_s bounds the handshake
    async with FastRedis.from_url(f"redis://127.0.0.1:{port}/3", timeout_s=1.0, connect_timeout_s=0.1) as client:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.ping()
        assert time.monotonic() - started < 0.4


async def test_paused_redis_times_out_then_a_new_connection_serves(fast, redis_url):
    client = FastRedis.from_url(redis_url, timeout_s=0.1)
    try:
        first_id = await client.execute("CLIENT", "ID")
        await fast.execute("CLIENT", "PAUSE", "300", "ALL")
        with pytest.raises(TimeoutError):
            await client.execute("GET", "k")
        second_id = await asyncio.wait_for(_first_answer(client), 3)
        assert second_id != first_id
    finally:
        await client.aclose()


async def _first_answer(client: FastRedis) -> int:
    while True:  # the pause lasts 300 ms; each try is bounded by timeout_s
        try:
            return await client.execute("CLIENT", "ID")
        except TimeoutError:
            continue


async def test_aclose_fails_pending_and_later_calls(redis_url):
    client = FastRedis.from_url(redis_url, timeout_s=5.0)
    pending = asyncio.ensure_future(client.execute("BLPOP", "q", "2"))
    await asyncio.sleep(0.05)
    await client.aclose()
    with pytest.raises(ConnectionError):
        await pending
    with pytest.raises(ConnectionError):
        await client.ping()


# --- AUTH and SELECT --------------------------------------------------------------------------

async def test_db_index_from_the_url(redis_url):
    base = redis_url.rsplit("/", 1)[0]
    async with FastRedis.from_url(f"{base}/3") as db3:
        await db3.execute("SET", "where", "db3")
    check = aioredis.Redis.from_url(f"{base}/3")
    zero = aioredis.Redis.from_url(f"{base}/0")
    try:
        assert await check.get("where") == b"db3" and await zero.get("where") is None
    finally:
        await check.aclose()
        await zero.aclose()
    async with FastRedis.from_url(f"{base}/99") as bad:
        with pytest.raises(ResponseError, match="DB index is out of range"):
            await bad.ping()


async def test_password_and_username_auth(password_redis):
    port, sock = password_redis
    async with FastRedis.from_url(f"redis://:{PASSWORD}@127.0.0.1:{port}/2") as client:
        await client.execute("SET", "k", "v")
        assert await client.execute("GET", "k") == b"v"
    async with FastRedis.from_url(f"redis://default:{PASSWORD}@127.0.0.1:{port}/2") as client:
        assert await client.execute("GET", "k") == b"v"
    async with FastRedis.from_url(f"unix://:{PASSWORD}@{sock}?db=2") as client:  # same db over the socket
        assert await client.execute("GET", "k") == b"v"
    async with FastRedis.from_url(f"redis://127.0.0.1:{port}/0") as anonymous:
        with pytest.raises(AuthenticationError):
            await anonymous.ping()


async def test_wrong_password_is_authentication_error_without_the_secret(password_redis):
    port, _ = password_redis
    async with FastRedis.from_url(f"redis://:wrong-{PASSWORD}@127.0.0.1:{port}/0") as client:
        with pytest.raises(AuthenticationError) as info:
            await client.ping()
        assert PASSWORD not in str(info.value)
    missing = Path("/nonexistent/redis.sock")
    async with FastRedis.from_url(f"unix://:{PASSWORD}@{missing}") as client:
        with pytest.raises(ConnectionError) as conn_info:
            await client.ping()
        assert PASSWORD not in str(conn_info.value)


# --- the same behaviour on uvloop (what the gateway runs) --------------------------------------

@pytest.mark.parametrize(
    "scenario",
    [test_every_reply_type, test_non_ascii_and_large_values_round_trip,
     test_thousand_concurrent_commands_get_their_own_replies, test_cancelled_caller_reply_is_consumed_and_dropped,
     test_many_cancellations_keep_fifo_integrity, test_stopped_server_fails_fast_then_recovers,
     test_refused_connection_is_connection_error, test_silent_server_times_out_every_pending_command_and_reconnects,
     test_paused_redis_times_out_then_a_new_connection_serves, test_aclose_fails_pending_and_later_calls],
    ids=lambda scenario: scenario.__name__.removeprefix("test_"),
)
def test_on_uvloop(scenario, redis_server, redis_url):
    async def run() -> None:
        async with FastRedis.from_url(redis_url, timeout_s=2.0) as fast, _silent_server() as silent:
            available = {"fast": fast, "redis_url": redis_url, "redis_server": redis_server, "silent_server": silent}
            await scenario(**{name: available[name] for name in inspect.signature(scenario).parameters})

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
