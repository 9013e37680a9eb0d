"""RedisLimiter specifics: key layout and expiry, script reloading, outages and recovery."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
import redis.asyncio as aioredis

from gateway.errors import InsufficientQuota, InvalidRequest, ServiceUnavailable
from gateway.limits import (
    BudgetRule,
    LimiterHooks,
    LimitPolicy,
    LocalLimiter,
    RedisLimiter,
)

pytestmark = pytest.mark.redis

DAILY = BudgetRule("org", "o1", 10_000, "daily", 50)
TOTAL = BudgetRule("key", "k1", 10_000, "total", 0, org_id="o1")
POLICY = LimitPolicy("o1", "k1", key_rpm=600, org_tpm=100_000, budgets=(DAILY, TOTAL))


class Recorder(LimiterHooks):
    """Hooks that remember what they were told (the metrics the lead wires)."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def soft_limit_hit(self, rule: BudgetRule) -> None:
        self.events.append(("soft", rule.scope))

    def rejected(self, reason: str, scope: str) -> None:
        self.events.append(("rejected", reason, scope))

    def degraded_changed(self, degraded: bool) -> None:
        self.events.append(("degraded", degraded))


@pytest.fixture
async def client(redis_url):
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=0.5)
    yield client
    await client.aclose()


async def until(predicate, *, timeout: float = 5.0, what: str = "condition"):
    """Await `predicate()` (a coroutine function) until truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def test_keys_share_the_org_hash_tag_and_periodic_ones_expire(client):
    limiter = RedisLimiter(client, prefix="fgt")
    res = await limiter.reserve(POLICY, cost_micros=100, tokens=50)
    keys = sorted(k.decode() for k in await client.keys("*"))
    assert keys and all(k.startswith("fgt:{o1}:") for k in keys), keys
    assert f"fgt:{{o1}}:res:{res.id}" in keys
    for key in keys:
        ttl = await client.pttl(key)
        if ":total:" in key:
            assert ttl == -1  # a total budget never expires
        elif ":daily:" in key:
            assert 2 * 86_400_000 < ttl <= 3 * 86_400_000  # the rest of today + 2 days
        else:
            assert 0 < ttl <= 1_800_000  # rate state and the reservation marker
    await limiter.settle(res, cost_micros=80, tokens=40)
    assert not await client.exists(f"fgt:{{o1}}:res:{res.id}")
    assert int(await client.hget("fgt:{o1}:budget:key:k1:total:all", "spent")) == 80


async def test_script_flush_is_survived(client):
    limiter = RedisLimiter(client)
    await limiter.reserve(POLICY, cost_micros=1, tokens=1)
    await client.script_flush()
    res = await limiter.reserve(POLICY, cost_micros=1, tokens=1)
    await client.script_flush()
    await limiter.settle(res, cost_micros=1, tokens=1)
    assert (await limiter.budget_status(DAILY)).spent_micros == 1 and not limiter.degraded


async def test_hooks_report_soft_limits_and_rejections(client):
    hooks = Recorder()
    limiter = RedisLimiter(client, hooks=hooks)
    await limiter.reserve(POLICY, cost_micros=5_000, tokens=1)
    with pytest.raises(InsufficientQuota):
        await limiter.reserve(POLICY, cost_micros=5_001, tokens=1)
    assert hooks.events == [("soft", "org"), ("rejected", "budget", "org")]


async def test_outage_falls_back_locally_and_recovers(redis_server, redis_url):
    hooks = Recorder()
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=0.5)
    limiter = RedisLimiter(client, timeout_s=0.25, probe_interval_s=0.05, hooks=hooks)
    try:
        before = await limiter.reserve(POLICY, cost_micros=1_000, tokens=10)
        assert before.origin == "redis"
        redis_server.stop()
        started = time.monotonic()
        during = await limiter.reserve(POLICY, cost_micros=9_000, tokens=10)
        assert time.monotonic() - started < 1.0
        assert during.origin == "local" and limiter.degraded
        with pytest.raises(InsufficientQuota):  # the local fallback still enforces the budget
            await limiter.reserve(POLICY, cost_micros=1_001, tokens=10)
        await limiter.settle(before, cost_micros=700, tokens=10)  # queued until Redis is back
        await limiter.settle(during, cost_micros=8_000, tokens=10)
        assert limiter.pending_settles == 1
        with pytest.raises(ServiceUnavailable):
            await limiter.budget_status(DAILY)

        redis_server.start()  # same port, data lost (no persistence)
        await limiter.rebuild(DAILY, 2_000)  # what the lead does from the lake after a data loss

        async def recovered() -> bool:
            await limiter.reserve(LimitPolicy("o2", "k2", key_rpm=10_000), cost_micros=0, tokens=0)
            return not limiter.degraded and limiter.pending_settles == 0

        await until(recovered, what="limiter recovery")
        assert (await limiter.budget_status(DAILY)).spent_micros == 2_000  # the replayed settle's marker is gone
        res = await limiter.reserve(POLICY, cost_micros=100, tokens=10)
        assert res.origin == "redis"
        assert ("degraded", True) in hooks.events and hooks.events[-1] != ("degraded", True)
    finally:
        await limiter.close()
        await client.aclose()


async def test_settles_queued_during_an_outage_are_replayed(redis_server, redis_url):
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=0.5)
    limiter = RedisLimiter(client, timeout_s=0.25, probe_interval_s=0.05)
    try:
        res = await limiter.reserve(POLICY, cost_micros=1_000, tokens=10)
        await client.execute_command("CLIENT", "PAUSE", "1000", "ALL")  # Redis alive but not answering
        started = time.monotonic()
        await limiter.settle(res, cost_micros=600, tokens=10)
        assert time.monotonic() - started < 0.6 and limiter.degraded and limiter.pending_settles == 1

        async def replayed() -> bool:
            await limiter.reserve(LimitPolicy("o2", "k2", key_rpm=10_000), cost_micros=0, tokens=0)
            return not limiter.degraded and limiter.pending_settles == 0

        await until(replayed, what="replay of the queued settle")
        status = await limiter.budget_status(DAILY)
        assert (status.spent_micros, status.reserved_micros) == (600, 0)
    finally:
        await limiter.close()
        await client.aclose()


@pytest.mark.parametrize("policy", ["fail-open", "fail-closed"])
async def test_outage_policies_without_local_fallback(policy):
    with socket.socket() as blackhole:  # accepts connections (backlog) but never answers
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(16)
        client = aioredis.Redis(host="127.0.0.1", port=blackhole.getsockname()[1])
        limiter = RedisLimiter(client, timeout_s=0.1, outage_policy=policy)
        try:
            started = time.monotonic()
            if policy == "fail-open":
                res = await limiter.reserve(POLICY, cost_micros=10**9, tokens=10**6)
                assert res.origin == "none"
            else:
                with pytest.raises(ServiceUnavailable) as info:
                    await limiter.reserve(POLICY, cost_micros=1, tokens=1)
                assert info.value.headers["Retry-After"] == "1" and info.value.code == "limits_unavailable"
            assert time.monotonic() - started < 0.5 and limiter.degraded
        finally:
            await limiter.close()
            await client.aclose()


async def test_given_fallback_is_used(client):
    fallback = LocalLimiter()
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    limiter = RedisLimiter(dead, fallback=fallback, timeout_s=0.5)
    try:
        res = await limiter.reserve(POLICY, cost_micros=100, tokens=1)
        assert res.origin == "local" and limiter.degraded
        await limiter.settle(res, cost_micros=90, tokens=1)
        assert (await fallback.budget_status(DAILY)).spent_micros == 90
    finally:
        await limiter.close()
        await dead.aclose()


@pytest.mark.parametrize(
    "kwargs", [{"outage_policy": "ignore"}, {"lease_s": 0}, {"timeout_s": -1}, {"max_inflight": 0}]
)
async def test_bad_settings_are_refused(client, kwargs):
    with pytest.raises(InvalidRequest):
        RedisLimiter(client, **kwargs)
