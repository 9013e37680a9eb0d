"""Spend admitted by the local fallback during a Redis outage reaches the Redis counters once
Redis is back: exactly once, including reservations still open at recovery and replies lost."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from importlib import resources

import pytest
import redis
import redis.asyncio as aioredis

from gateway import appkeys
from gateway.limits import BudgetRule, LimitPolicy, RedisLimiter
from tests.fleet import gateway_settings, running_gateway, sim_pod
from tests.integration.test_budget_persistence import (
    BODY,
    COST,
    lake_spend,
    setup_budget,
    spent,
)
from tests.integration.test_dataplane import fire
from tests.support import RedisServer, eventually, started_redis

pytestmark = pytest.mark.redis

SLOW = {**BODY, "model": "slow"}  # 5 s on the slow pod: open across the recovery


@pytest.fixture
def own_redis():
    """A private redis-server this test may stop, restart and let save its data."""
    server = started_redis()
    yield server
    server.close()


def _outage(server: RedisServer, kind: str) -> None:
    """Begin an outage of `kind`; `_recover` ends it."""
    client = redis.Redis.from_url(server.url)
    try:
        if kind == "timeout":  # alive but silent: every limiter call times out
            client.execute_command("CLIENT", "PAUSE", "2500", "ALL")
        elif kind == "restart-with-data":
            client.shutdown(save=True)  # the RDB file is loaded again at start
            server.proc.wait(10)
            server.proc = None
        else:  # restart-empty: no persistence, the counters are gone
            server.stop()
    finally:
        client.close()


def _recover(server: RedisServer, kind: str) -> None:
    if kind != "timeout":
        server.start()


@pytest.mark.parametrize("kind", ["timeout", "restart-with-data", "restart-empty"])
async def test_outage_spend_reaches_redis_exactly_once(tmp_path, own_redis, kind):
    settings = gateway_settings(tmp_path, usage_sink="spool", redis_url=own_redis.url, redis_timeout_ms=200)
    async with sim_pod("m") as pod, sim_pod("slow", tokens_per_s=20) as slow_pod, \
            running_gateway(settings) as gw:
        key = await setup_budget(gw.admin, pod, usd=10.0)
        r = await gw.admin.post("/admin/v1/models", json={"name": "slow", "endpoint": slow_pod, "input_price": 0,
                                                          "output_price": 2.0, "max_tokens": 100})
        assert r.status_code in (200, 201), r.text
        limiter = gw.app[appkeys.DATAPLANE].limiter
        assert await fire(gw.url, key, 5, body=BODY) == Counter({200: 5})

        await asyncio.to_thread(_outage, own_redis, kind)
        assert await fire(gw.url, key, 7, body=BODY) == Counter({200: 7})
        assert limiter.degraded

        async def journaled() -> bool:  # settles run just after the responses
            return limiter.pending_reconcile_micros == 7 * COST

        await eventually(journaled, what="the outage's settles to wait for Redis")
        slow = asyncio.create_task(fire(gw.url, key, 1, body=SLOW))  # reserved locally, settles after recovery

        await asyncio.to_thread(_recover, own_redis, kind)

        async def recovered() -> bool:
            await fire(gw.url, key, 1, body=BODY)
            return not limiter.degraded

        await eventually(recovered, timeout=10, interval=0.1, what="the limiter to use Redis again")
        assert not slow.done(), "the slow request was meant to be open across the recovery"
        assert await slow == Counter({200: 1})
        assert await fire(gw.url, key, 3, body=BODY) == Counter({200: 3})

        async def counted() -> bool:
            return limiter.pending_reconcile_micros == 0 and await spent(gw.admin) == await lake_spend(gw)

        await eventually(counted, timeout=15, interval=0.2, what="Redis to count the outage's spend")
        total = await lake_spend(gw)
        assert total >= 17 * COST  # 5 before, 7 during, the slow one, the probes, 3 after
        assert await spent(gw.admin) == total


class ReplyDropper:
    """A TCP proxy to Redis that can refuse every connection (an outage), or forward one command
    containing `marker` and then cut the connection instead of returning the reply."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.down = False
        self.marker: bytes | None = None
        self.dropped = 0
        self._conns: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        self.down = True
        for writer in list(self._conns):
            writer.close()

    async def close(self) -> None:
        self.cut()
        self._server.close()
        await self._server.wait_closed()

    async def _client(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        if self.down:
            c_writer.close()
            return
        s_reader, s_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._conns.update((c_writer, s_writer))
        drop = asyncio.Event()

        async def upstream() -> None:
            while data := await c_reader.read(65536):
                if self.marker is not None and self.marker in data:
                    self.marker = None
                    drop.set()
                s_writer.write(data)
                await s_writer.drain()

        async def downstream() -> None:
            while data := await s_reader.read(65536):
                if drop.is_set():
                    self.dropped += 1
                    return  # Redis ran the command; its reply never arrives
                c_writer.write(data)
                await c_writer.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for writer in (c_writer, s_writer):
                writer.close()
                self._conns.discard(writer)


async def test_a_batch_whose_reply_was_lost_counts_once(redis_url):
    reconcile = resources.files("gateway.limits").joinpath("reconcile.lua").read_text(encoding="utf-8")
    direct = aioredis.Redis.from_url(redis_url)
    await direct.script_load(reconcile)  # so the first EVALSHA runs the script (no NOSCRIPT round)
    proxy = ReplyDropper(direct.connection_pool.connection_kwargs["port"])
    client = aioredis.Redis(host="127.0.0.1", port=await proxy.start(), socket_connect_timeout=0.2)
    limiter = RedisLimiter(client, timeout_s=0.25, probe_interval_s=0.05)
    budgets = {org: BudgetRule("org", org, 10**9, "monthly") for org in ("o1", "o2")}
    policies = {org: LimitPolicy(org, f"k-{org}", budgets=(rule,)) for org, rule in budgets.items()}
    try:
        for org, cost in (("o1", 100), ("o2", 10)):  # counters that Redis keeps through the outage
            res = await limiter.reserve(policies[org], cost_micros=cost, tokens=1)
            await limiter.settle(res, cost_micros=cost, tokens=1)

        proxy.cut()  # Redis unreachable: the fallback admits and settles locally
        for org, cost in (("o1", 70), ("o1", 50), ("o2", 30)):
            res = await limiter.reserve(policies[org], cost_micros=cost, tokens=1)
            assert res.origin == "local"
            await limiter.settle(res, cost_micros=cost, tokens=1)
        assert limiter.pending_reconcile_micros == 150

        proxy.down = False
        proxy.marker = hashlib.sha1(reconcile.encode()).hexdigest().encode()  # noqa: S324 - Redis's script name

        async def reconciled() -> bool:
            await limiter.reserve(LimitPolicy("o3", "k3", key_rpm=10**6), cost_micros=0, tokens=0)  # probes Redis
            return not limiter.degraded and limiter.pending_reconcile_micros == 0

        await eventually(reconciled, timeout=10, what="the outage's spend to reach Redis")
        assert proxy.dropped == 1  # one batch ran in Redis, its reply was lost, and it was sent again
        assert (await limiter.budget_status(budgets["o1"])).spent_micros == 100 + 70 + 50
        assert (await limiter.budget_status(budgets["o2"])).spent_micros == 10 + 30
    finally:
        await limiter.close()
        await client.aclose()
        await proxy.close()
        await direct.aclose()
