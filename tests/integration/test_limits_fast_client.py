"""RedisLimiter over FastRedis: the whole Limiter contract, plus NOSCRIPT, replicas and outages.

The contract tests are imported from test_limits_contract and run here with a `make_limiter`
that builds RedisLimiter on FastRedis, so both clients are held to the same behaviour.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.errors import InsufficientQuota, RateLimited, ServiceUnavailable
from gateway.limits import BudgetRule, LimitPolicy, RedisLimiter
from gateway.redis.client import FastRedis
from tests.integration import test_limits_contract as contract

pytestmark = pytest.mark.redis

# Every contract test, collected again in this module (pytest resolves `make_limiter` here).
CONTRACT_TESTS = {name: test for name, test in vars(contract).items() if name.startswith("test_")}
assert len(CONTRACT_TESTS) > 10, "the contract tests moved: update this import"
globals().update(CONTRACT_TESTS)
clock = contract.clock

DAILY = BudgetRule("org", "o1", 10_000, "daily", 50)
POLICY = LimitPolicy("o1", "k1", key_rpm=600, org_tpm=100_000, budgets=(DAILY,))


@pytest.fixture
async def make_limiter(redis_url, clock):
    """Limiters over FastRedis sharing `clock`, one client each (as separate replicas would)."""
    made: list[tuple[RedisLimiter, FastRedis]] = []

    def make(**kwargs) -> RedisLimiter:
        client = FastRedis.from_url(redis_url, timeout_s=2.0)
        limiter = RedisLimiter(client, clock=clock, timeout_s=2.0, **kwargs)
        made.append((limiter, client))
        return limiter

    make.kind = "redis"
    yield make
    for limiter, client in made:
        await limiter.close()
        assert not limiter.degraded
        await client.aclose()


async def test_script_flush_is_survived(make_limiter, redis_url):
    limiter = make_limiter()
    async with FastRedis.from_url(redis_url) as admin:
        await limiter.reserve(POLICY, cost_micros=1, tokens=1)
        await admin.execute("SCRIPT", "FLUSH")
        res = await limiter.reserve(POLICY, cost_micros=1, tokens=1)
        await admin.execute("SCRIPT", "FLUSH")
        await limiter.settle(res, cost_micros=1, tokens=1)
    assert (await limiter.budget_status(DAILY)).spent_micros == 1 and not limiter.degraded


async def test_two_replicas_never_overshoot(make_limiter):
    replicas = [make_limiter(), make_limiter()]
    rule = BudgetRule("org", "o1", 5_000, "daily", 80)
    settled: list[int] = []

    async def request(limiter: RedisLimiter) -> None:
        res = await limiter.reserve(LimitPolicy("o1", "k1", budgets=(rule,)), cost_micros=70, tokens=10)
        await asyncio.sleep(0)
        await limiter.settle(res, cost_micros=70, tokens=10)
        settled.append(70)

    outcomes = await asyncio.gather(*(request(replicas[i % 2]) for i in range(300)), return_exceptions=True)
    assert all(isinstance(o, InsufficientQuota) for o in outcomes if o is not None)
    assert len(settled) == 5_000 // 70
    status = await replicas[1].budget_status(rule)
    assert status.spent_micros == sum(settled) and status.reserved_micros == 0


async def test_rpm_burst_across_two_replicas(make_limiter):
    replicas = [make_limiter(), make_limiter()]
    limits = LimitPolicy("o1", "k1", key_rpm=60)
    outcomes = await asyncio.gather(
        *(replicas[i % 2].reserve(limits, cost_micros=0, tokens=0) for i in range(100)), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(refused) == 40 and all(isinstance(o, RateLimited) for o in refused)


async def test_outage_falls_back_locally_and_recovers(redis_server, redis_url):
    client = FastRedis.from_url(redis_url, timeout_s=0.25)
    limiter = RedisLimiter(client, timeout_s=0.25, probe_interval_s=0.05)
    try:
        before = await limiter.reserve(POLICY, cost_micros=1_000, tokens=10)
        assert before.origin == "redis"
        await asyncio.to_thread(redis_server.stop)
        started = time.monotonic()
        during = await limiter.reserve(POLICY, cost_micros=9_000, tokens=10)
        assert time.monotonic() - started < 1.0
        assert during.origin == "local" and limiter.degraded
        with pytest.raises(InsufficientQuota):  # the local fallback still enforces the budget
            await limiter.reserve(POLICY, cost_micros=1_001, tokens=10)
        await limiter.settle(before, cost_micros=700, tokens=10)  # queued until Redis is back
        assert limiter.pending_settles == 1
        with pytest.raises(ServiceUnavailable):
            await limiter.budget_status(DAILY)

        await asyncio.to_thread(redis_server.start)
        deadline = time.monotonic() + 5
        while limiter.degraded or limiter.pending_settles:
            assert time.monotonic() < deadline, "the limiter did not recover"
            await limiter.reserve(LimitPolicy("o2", "k2", key_rpm=10_000), cost_micros=0, tokens=0)
            await asyncio.sleep(0.02)
        assert (await limiter.reserve(POLICY, cost_micros=100, tokens=10)).origin == "redis"
    finally:
        await limiter.close()
        await client.aclose()


@pytest.mark.parametrize("policy", ["fail-open", "fail-closed"])
async def test_unanswering_redis_is_an_outage_within_the_timeout(redis_url, policy):
    client = FastRedis.from_url(redis_url, timeout_s=0.1)
    limiter = RedisLimiter(client, timeout_s=0.1, outage_policy=policy)
    async with FastRedis.from_url(redis_url) as admin:
        try:
            await client.ping()
            await admin.execute("CLIENT", "PAUSE", "300", "ALL")  # Redis alive but not answering
            started = time.monotonic()
            if policy == "fail-open":
                assert (await limiter.reserve(POLICY, cost_micros=10**9, tokens=10)).origin == "none"
            else:
                with pytest.raises(ServiceUnavailable):
                    await limiter.reserve(POLICY, cost_micros=1, tokens=1)
            assert time.monotonic() - started < 0.4 and limiter.degraded
        finally:
            await limiter.close()
            await client.aclose()


async def test_a_reserve_cancelled_in_flight_leaves_nothing_reserved(make_limiter, redis_url):
    """A client that disconnects while its reserve is on the wire: the script still runs (here:
    held by CLIENT PAUSE until after the cancel), and what it reserved is freed right after."""
    import redis.asyncio as aioredis

    limiter = make_limiter()
    policy = LimitPolicy("o1", "k-cancel", key_rpm=1, org_tpm=100_000, budgets=(DAILY,))  # RPM state lasts 60 s
    warm = LimitPolicy("o1", "k-warm", budgets=(DAILY,))
    await limiter.release(await limiter.reserve(warm, cost_micros=1, tokens=1))  # connected, scripts loaded
    admin = aioredis.Redis.from_url(redis_url)
    rpm_key = "fg:{o1}:rl:key:k-cancel:rpm"
    try:
        assert not await admin.exists(rpm_key)
        await admin.execute_command("CLIENT", "PAUSE", 2000, "WRITE")
        task = asyncio.ensure_future(limiter.reserve(policy, cost_micros=4_000, tokens=50_000))
        await asyncio.sleep(0.1)  # sent, and held by Redis
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await admin.execute_command("CLIENT", "UNPAUSE")
        deadline = time.monotonic() + 5
        while (await limiter.budget_status(DAILY)).reserved_micros and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert (await limiter.budget_status(DAILY)).reserved_micros == 0
        assert await admin.exists(rpm_key)  # the reserve did run: it counted the request
        # The org's whole TPM budget is available again: a request of 100k tokens fits.
        other = LimitPolicy("o1", "k-other", org_tpm=100_000, budgets=(DAILY,))
        await limiter.release(await limiter.reserve(other, cost_micros=1, tokens=100_000))
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
