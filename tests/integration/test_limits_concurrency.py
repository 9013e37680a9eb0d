"""Budgets and rate limits hold across replicas: two RedisLimiters with separate pools, and two OS processes."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys

import pytest
import redis.asyncio as aioredis

from gateway.errors import InsufficientQuota, RateLimited
from gateway.limits import BudgetRule, LimitPolicy, RedisLimiter
from tests.support import repo_root

pytestmark = pytest.mark.redis

LIMIT = 5_000
COST = 70
RULE = BudgetRule("org", "o1", LIMIT, "daily", 80)
POLICY = LimitPolicy("o1", "k1", budgets=(RULE,))


@pytest.fixture
async def replicas(redis_url):
    """Two limiters as two gateway replicas would have them: one client (and pool) each."""
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    limiters = [RedisLimiter(client, timeout_s=5.0) for client in clients]
    yield limiters
    for limiter, client in zip(limiters, clients, strict=True):
        await limiter.close()
        assert not limiter.degraded
        await client.aclose()


async def test_budget_never_overshoots_across_two_replicas(replicas):
    settled: list[int] = []

    async def request(limiter: RedisLimiter) -> None:
        res = await limiter.reserve(POLICY, cost_micros=COST, tokens=10)
        await asyncio.sleep(0)
        await limiter.settle(res, cost_micros=COST, tokens=10)
        settled.append(COST)

    outcomes = await asyncio.gather(*(request(replicas[i % 2]) for i in range(300)), return_exceptions=True)
    refused = [o for o in outcomes if o is not None]
    assert all(isinstance(o, InsufficientQuota) for o in refused)
    assert len(settled) == LIMIT // COST and len(refused) == 300 - LIMIT // COST
    status = await replicas[0].budget_status(RULE)
    assert status.spent_micros == sum(settled) <= LIMIT and status.reserved_micros == 0


async def test_budget_is_exhausted_to_within_one_request_when_actual_cost_varies(replicas):
    rng = random.Random(7)
    settled: list[int] = []

    async def request(limiter: RedisLimiter, actual: int) -> None:
        res = await limiter.reserve(POLICY, cost_micros=COST, tokens=10)
        await asyncio.sleep(0)
        await limiter.settle(res, cost_micros=actual, tokens=10)
        settled.append(actual)

    outcomes = await asyncio.gather(
        *(request(replicas[i % 2], rng.randint(COST // 2, COST)) for i in range(300)), return_exceptions=True
    )
    assert all(isinstance(o, InsufficientQuota) for o in outcomes if o is not None)
    while True:  # what the concurrent burst left, requests take one at a time until the budget says no
        try:
            await request(replicas[len(settled) % 2], COST)
        except InsufficientQuota:
            break
    status = await replicas[1].budget_status(RULE)
    assert status.spent_micros == sum(settled)
    assert LIMIT - COST < sum(settled) <= LIMIT


async def test_rpm_burst_across_two_replicas_lets_exactly_the_limit_through(replicas):
    limits = LimitPolicy("o1", "k1", key_rpm=60)
    outcomes = await asyncio.gather(
        *(replicas[i % 2].reserve(limits, cost_micros=0, tokens=0) for i in range(100)), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(refused) == 40 and all(isinstance(o, RateLimited) for o in refused)
    assert all(1 <= int(o.headers["Retry-After"]) <= 60 for o in refused)


async def test_tpm_is_global_across_replicas(replicas):
    limits = LimitPolicy("o1", "k1", org_tpm=1_000)
    first = await replicas[0].reserve(limits, cost_micros=0, tokens=600)
    with pytest.raises(RateLimited):
        await replicas[1].reserve(limits, cost_micros=0, tokens=600)
    await replicas[0].settle(first, cost_micros=0, tokens=100)
    await replicas[1].reserve(limits, cost_micros=0, tokens=600)


WORKER = r"""
import asyncio, json, sys
import redis.asyncio as aioredis
from gateway.errors import InsufficientQuota
from gateway.limits import BudgetRule, LimitPolicy, RedisLimiter

async def main(url, tasks, cost, limit):
    client = aioredis.Redis.from_url(url)
    limiter = RedisLimiter(client, timeout_s=5.0)
    policy = LimitPolicy("o1", "k1", budgets=(BudgetRule("org", "o1", limit, "daily", 80),))
    # Start together: both processes check in, then wait (with a deadline) for the other.
    await client.incr("test:barrier")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while int(await client.get("test:barrier")) < 2 and loop.time() < deadline:
        await asyncio.sleep(0.001)
    settled, refused = [], 0

    async def worker():
        nonlocal refused
        while True:
            try:
                res = await limiter.reserve(policy, cost_micros=cost, tokens=1)
            except InsufficientQuota:
                refused += 1
                return
            await limiter.settle(res, cost_micros=cost, tokens=1)
            settled.append(cost)

    await asyncio.gather(*(worker() for _ in range(tasks)))
    print(json.dumps({"settled": sum(settled), "accepted": len(settled), "refused": refused,
                      "degraded": limiter.degraded}))
    await limiter.close()
    await client.aclose()

asyncio.run(main(sys.argv[1], *map(int, sys.argv[2:])))
"""


async def test_budget_never_overshoots_across_two_processes(redis_url):
    limit = 50_000  # ~700 requests: long enough for both processes to compete
    rule = BudgetRule("org", "o1", limit, "daily", 80)
    env = {**os.environ, "PYTHONPATH": str(repo_root())}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", WORKER, redis_url, "75", str(COST), str(limit),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=str(repo_root()),
        )
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, err.decode()
        results.append(json.loads(out))
    assert not any(r["degraded"] for r in results)
    assert sum(r["accepted"] for r in results) == limit // COST
    assert sum(r["refused"] for r in results) == 150
    assert all(r["accepted"] > 0 for r in results), results  # both processes really competed
    client = aioredis.Redis.from_url(redis_url)
    try:
        status = await RedisLimiter(client).budget_status(rule)
    finally:
        await client.aclose()
    assert status.spent_micros == sum(r["settled"] for r in results) == COST * (limit // COST)
    assert status.reserved_micros == 0
