"""Benchmark: client CPU per Redis command and per limiter reserve+settle, FastRedis vs redis.asyncio.

Run: python -m benchmarks.redis_client --redis-url redis://127.0.0.1:6379/15 [--pairs 20000] [--no-uvloop]
(keys go under the prefix "fgbench" and are deleted afterwards). CPU is this process's only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from gateway.limits.base import BudgetRule, LimitPolicy
from gateway.limits.redis import RedisLimiter, ScriptClient
from gateway.redis.client import FastRedis

PREFIX = "fgbench"
RETURN_ONE = "return 1"


async def _timed(calls: int, concurrency: int, one: Callable[[int], Awaitable[Any]]) -> dict[str, float]:
    """Run `one(worker_index)` calls/concurrency times in each of `concurrency` tasks."""
    per_task = calls // concurrency

    async def worker(index: int) -> None:
        for _ in range(per_task):
            await one(index)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = per_task * concurrency
    return {"n": done, "per_s": round(done / wall), "cpu_us": round(cpu / done * 1e6, 1)}


async def _commands(client: ScriptClient, calls: int, concurrency: int) -> dict[str, float]:
    sha = await client.script_load(RETURN_ONE)
    return await _timed(calls, concurrency, lambda _: client.evalsha(sha, 0))


async def _pairs(client: ScriptClient, pairs: int, concurrency: int) -> dict[str, float]:
    limiter = RedisLimiter(client, prefix=PREFIX, timeout_s=5.0)
    policies = [
        LimitPolicy(f"org{i}", f"key{i}", key_rpm=10**9, org_tpm=10**12,
                    budgets=(BudgetRule("org", f"org{i}", 10**15, "monthly"),))
        for i in range(concurrency)
    ]

    async def pair(index: int) -> None:
        res = await limiter.reserve(policies[index], cost_micros=500, tokens=300)
        await limiter.settle(res, cost_micros=300, tokens=200)

    result = await _timed(pairs, concurrency, pair)
    assert not limiter.degraded, "Redis calls failed during the benchmark"
    await limiter.close()
    return result


async def run(redis_url: str, pairs: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    admin = aioredis.Redis.from_url(redis_url)
    clients: dict[str, Callable[[], Any]] = {
        "fast": lambda: FastRedis.from_url(redis_url, timeout_s=5.0),
        "redispy": lambda: aioredis.Redis.from_url(redis_url),
    }
    try:
        for name, make in clients.items():
            client = make()
            try:
                await _pairs(client, 500, 1)  # warm up: connection, scripts
                for concurrency in (1, 16):
                    results[f"{name}_evalsha_c{concurrency}"] = await _commands(client, pairs, concurrency)
                    results[f"{name}_pair_c{concurrency}"] = await _pairs(client, pairs, concurrency)
            finally:
                await client.aclose()
        async for key in admin.scan_iter(match=f"{PREFIX}:*", count=1000):
            await admin.delete(key)
    finally:
        await admin.aclose()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--pairs", type=int, default=20_000, help="calls per measurement")
    parser.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    if args.uvloop:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    else:
        runner = asyncio.Runner()
    with runner:
        print(json.dumps(runner.run(run(args.redis_url, args.pairs)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
