"""The upstream pool's per-host connection cap: bounded sockets, FIFO waiters, queue timeout, no leaked slots.

A hand-written server on loopback holds answers until the test lets them go and counts the
connections it sees at once; the simulator serves the burst test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
import uvloop

from gateway.errors import ConfigError, ServiceUnavailable
from gateway.upstream import UpstreamConnectError, UpstreamPool, UpstreamProtocolError, UpstreamSaturated
from opsctl.sim import SimConfig, create_sim_app
from tests.support import eventually
from tests.unit.test_upstream import read_request, serve


class GatedServer:
    """Answers `{"n": <body's n>}` once `gate` is open; counts concurrent connections; can drop them."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.open_now = 0
        self.peak = 0
        self.connections = 0
        self.order: list[int] = []  # request numbers in the order the server received them
        self.drop_next = False  # reset the connection of the next request instead of answering
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_now += 1
        self.connections += 1
        self.peak = max(self.peak, self.open_now)
        try:
            while (raw := await read_request(reader)) is not None:
                n = orjson.loads(raw.split(b"\r\n\r\n", 1)[1])["n"]
                self.order.append(n)
                if self.drop_next:
                    self.drop_next = False
                    writer.transport.abort()
                    return
                await self.gate.wait()
                body = orjson.dumps({"n": n})
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                await writer.drain()
        except ConnectionError:
            pass  # the client hung up: that is what some tests do
        finally:
            self.open_now -= 1
            writer.close()


@contextlib.asynccontextmanager
async def gated_server() -> AsyncIterator[GatedServer]:
    gated = GatedServer()
    server = await asyncio.start_server(gated.handle, "127.0.0.1", 0, backlog=1024)
    gated.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield gated
    finally:
        server.close()
        await server.wait_closed()


async def call(pool: UpstreamPool, url: str, n: int) -> int:
    async with await pool.request(url, "/x", orjson.dumps({"n": n})) as resp:
        assert resp.status == 200
        return orjson.loads(await resp.read())["n"]


def waiting(pool: UpstreamPool, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return pool.stats.waiting == count

    return check


async def test_a_burst_never_opens_more_than_the_cap() -> None:
    body = orjson.dumps({"model": "m", "prompt": "hi", "max_tokens": 2})
    peak = 0
    async with serve(create_sim_app(SimConfig(model="m", ttft_ms=20))) as url, \
            UpstreamPool(max_connections_per_host=4, queue_timeout_s=10) as pool:

        async def one() -> int:
            nonlocal peak
            async with await pool.request(url, "/v1/completions", body) as resp:
                peak = max(peak, pool.stats.open)
                return orjson.loads(await resp.read())["usage"]["completion_tokens"]

        assert await asyncio.gather(*(one() for _ in range(60))) == [2] * 60
        stats = pool.stats
    assert peak == 4 and stats.opened == 4 and stats.queued > 0 and stats.saturated == 0
    assert (stats.open, stats.in_use, stats.idle, stats.waiting) == (4, 0, 4, 0)


async def test_the_server_sees_at_most_the_cap_and_waiters_go_first_come_first_served() -> None:
    async with gated_server() as server, UpstreamPool(max_connections_per_host=2, queue_timeout_s=10) as pool:
        holders = [asyncio.ensure_future(call(pool, server.url, n)) for n in (0, 1)]
        await eventually(lambda: _true(len(server.order) == 2), what="two requests on the wire")
        queued = []
        for n in range(2, 7):  # queue them one by one, so their order is known
            queued.append(asyncio.ensure_future(call(pool, server.url, n)))
            await eventually(waiting(pool, n - 1), what=f"request {n} queued")
        assert pool.host_stats(server.url).in_use == 2 and pool.host_stats(server.url + "/v1").waiting == 5
        server.gate.set()
        assert await asyncio.gather(*holders, *queued) == list(range(7))
    assert server.peak == 2 and server.connections == 2
    assert sorted(server.order[:2]) == [0, 1]  # the two first ones race to connect
    assert server.order[2:] == list(range(2, 7)), "released connections go to the waiters in arrival order"


async def test_queue_timeout_raises_a_503_that_names_the_limit_not_the_url() -> None:
    async with gated_server() as server, UpstreamPool(max_connections_per_host=1, queue_timeout_s=0.2) as pool:
        holder = asyncio.ensure_future(call(pool, server.url, 0))
        await eventually(lambda: _true(server.order == [0]), what="the first request on the wire")
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamSaturated) as info:
            await call(pool, server.url, 1)
        waited = asyncio.get_running_loop().time() - started
        error = info.value
        assert isinstance(error, ServiceUnavailable) and error.status == 503 and error.code == "upstream_saturated"
        assert "1 connections" in error.message and "upstream_max_connections_per_host" in error.message
        assert "127.0.0.1" not in error.message and server.url.rsplit(":", 1)[1] not in error.message
        assert error.headers["Retry-After"] == "1" and 0.19 <= waited < 1.5
        assert server.order == [0], "a saturated request sends nothing"
        assert (pool.stats.saturated, pool.stats.waiting, pool.stats.open) == (1, 0, 1)
        server.gate.set()
        assert await holder == 0 and await call(pool, server.url, 2) == 2
    assert server.connections == 1


async def test_cancelled_waiters_leak_no_slot_even_when_cancelled_as_they_are_granted_one() -> None:
    async with gated_server() as server, UpstreamPool(max_connections_per_host=1, queue_timeout_s=10) as pool:
        holder = asyncio.ensure_future(pool.request(server.url, "/x", orjson.dumps({"n": 0})))
        await eventually(lambda: _true(server.order == [0]), what="the first request on the wire")
        gone = [asyncio.ensure_future(call(pool, server.url, n)) for n in (1, 2, 3)]
        await eventually(waiting(pool, 3), what="three queued")
        gone[1].cancel()  # leaves from the middle of the queue
        await asyncio.wait([gone[1]])
        assert pool.stats.waiting == 2
        server.gate.set()
        first = await holder
        assert orjson.loads(await first.read()) == {"n": 0}
        first.release()  # its connection goes to request 1 ...
        gone[0].cancel()  # ... cancelled in the same instant, before it could run: the connection moves on
        results = await asyncio.gather(*gone, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError) and isinstance(results[1], asyncio.CancelledError)
        assert results[2] == 3
        assert await call(pool, server.url, 4) == 4
        assert (pool.stats.open, pool.stats.waiting) == (1, 0)
    assert server.order == [0, 3, 4] and server.connections == 1


async def test_a_connection_that_dies_frees_its_slot_for_a_waiter() -> None:
    async with gated_server() as server, UpstreamPool(max_connections_per_host=1, queue_timeout_s=5) as pool:
        server.drop_next = True
        doomed = asyncio.ensure_future(call(pool, server.url, 0))
        waiter = asyncio.ensure_future(call(pool, server.url, 1))
        server.gate.set()
        with pytest.raises((UpstreamConnectError, UpstreamProtocolError)):
            await doomed
        assert await waiter == 1
        assert (pool.stats.opened, pool.stats.open, pool.stats.saturated) == (2, 1, 0)


async def test_a_response_closed_by_the_caller_frees_its_slot_at_once() -> None:
    async with gated_server() as server, UpstreamPool(max_connections_per_host=1, queue_timeout_s=5) as pool:
        first = await _started(pool, server, 0)
        waiter = asyncio.ensure_future(call(pool, server.url, 1))
        await eventually(waiting(pool, 1), what="the second request queued")
        first.cancel()  # the gateway's client went away: the connection is closed, its slot handed on
        server.gate.set()
        assert await waiter == 1 and pool.stats.opened == 2


async def test_a_stale_connection_at_the_cap_is_replaced_without_waiting() -> None:
    """The pod drops the only (idle) connection; the retry must not queue behind its own slot."""
    async with gated_server() as server, UpstreamPool(max_connections_per_host=1, queue_timeout_s=0.5) as pool:
        server.gate.set()
        assert await call(pool, server.url, 0) == 0
        server.drop_next = True  # the reused connection is reset when the next request arrives
        assert await call(pool, server.url, 1) == 1
        assert (pool.stats.stale_retries, pool.stats.opened, pool.stats.saturated) == (1, 2, 0)


async def test_the_cap_is_per_host_and_shared_by_urls_of_one_host() -> None:
    async with gated_server() as a, gated_server() as b, UpstreamPool(max_connections_per_host=1,
                                                                     queue_timeout_s=5) as pool:
        first = [asyncio.ensure_future(call(pool, a.url, 0)), asyncio.ensure_future(call(pool, b.url, 0))]
        await eventually(lambda: _true(a.order == [0] and b.order == [0]), what="one request on each host")
        same_host = asyncio.ensure_future(call(pool, a.url + "/v1/", 1))
        await eventually(waiting(pool, 1), what="the request to host a, under another URL, queued")
        assert pool.host_stats(b.url).waiting == 0
        a.gate.set()
        b.gate.set()
        assert await asyncio.gather(*first, same_host) == [0, 0, 1]
    assert (a.peak, b.peak) == (1, 1)


async def test_closing_the_pool_fails_queued_requests() -> None:
    async with gated_server() as server:
        pool = UpstreamPool(max_connections_per_host=1, queue_timeout_s=10)
        holder = asyncio.ensure_future(call(pool, server.url, 0))
        await eventually(lambda: _true(server.order == [0]), what="the first request on the wire")
        queued = asyncio.ensure_future(call(pool, server.url, 1))
        await eventually(waiting(pool, 1), what="the second request queued")
        await pool.close()
        with pytest.raises(UpstreamConnectError, match="closed"):
            await queued
        with pytest.raises((UpstreamProtocolError, UpstreamConnectError)):
            await holder
        assert (pool.stats.open, pool.stats.waiting) == (0, 0)


@pytest.mark.parametrize("bad", [{"max_connections_per_host": 0}, {"queue_timeout_s": 0},
                                 {"queue_timeout_s": float("inf")}])
def test_bad_cap_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad))):
        UpstreamPool(**bad)


@pytest.mark.parametrize(
    "scenario",
    [test_the_server_sees_at_most_the_cap_and_waiters_go_first_come_first_served,
     test_cancelled_waiters_leak_no_slot_even_when_cancelled_as_they_are_granted_one,
     test_queue_timeout_raises_a_503_that_names_the_limit_not_the_url],
    ids=lambda scenario: scenario.__name__.removeprefix("test_"),
)
def test_on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


# --- helpers ----------------------------------------------------------------------------------

async def _true(value: bool) -> bool:
    return value


async def _started(pool: UpstreamPool, server: GatedServer, n: int) -> asyncio.Future[int]:
    task = asyncio.ensure_future(call(pool, server.url, n))
    await eventually(lambda: _true(n in server.order), what=f"request {n} on the wire")
    return task
