"""Benchmark: reserve+settle pairs per second and client CPU per pair, Redis and in-process.

Run: python -m benchmarks.limits --redis-url redis://127.0.0.1:6379/15 [--pairs 20000] [--client fast]
(it writes keys under the prefix "fgbench" and deletes them afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import redis.asyncio as aioredis

from gateway.limits.base import BudgetRule, Limiter, LimitPolicy
from gateway.limits.local import LocalLimiter
from gateway.limits.redis import RedisLimiter
from gateway.redis.client import FastRedis

PREFIX = "fgbench"


async def _pairs(limiter: Limiter, pairs: int, concurrency: int) -> dict[str, float]:
    policies = [
        LimitPolicy(
            f"org{i}", f"key{i}", key_rpm=10**9, org_tpm=10**12,
            budgets=(BudgetRule("org", f"org{i}", 10**15, "monthly"),),
        )
        for i in range(concurrency)
    ]

    async def worker(policy: LimitPolicy, count: int) -> None:
        for _ in range(count):
            res = await limiter.reserve(policy, cost_micros=500, tokens=300)
            await limiter.settle(res, cost_micros=300, tokens=200)

    per_worker = pairs // concurrency
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(p, per_worker) for p in policies))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = per_worker * concurrency
    return {"pairs": done, "pairs_per_s": round(done / wall), "cpu_us_per_pair": round(cpu / done * 1e6, 1)}


async def run(redis_url: str, pairs: int, client_kind: str = "fast") -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    client = aioredis.Redis.from_url(redis_url)
    script_client = FastRedis.from_url(redis_url, timeout_s=5.0) if client_kind == "fast" else client
    try:
        limiter = RedisLimiter(script_client, prefix=PREFIX, timeout_s=5.0)
        await _pairs(limiter, 500, 1)  # warm up: connections, scripts
        for concurrency in (1, 16):
            results[f"redis_{client_kind}_c{concurrency}"] = await _pairs(limiter, pairs, concurrency)
        assert not limiter.degraded, "Redis calls failed during the benchmark"
        await limiter.close()
        async for key in client.scan_iter(match=f"{PREFIX}:*", count=1000):
            await client.delete(key)
    finally:
        if script_client is not client:
            await script_client.aclose()
        await client.aclose()
    results["local_c16"] = await _pairs(LocalLimiter(), pairs, 16)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--client", choices=("fast", "redis-py"), default="fast",
                        help="Redis client under RedisLimiter: gateway.redis.client.FastRedis or redis.asyncio")
    parser.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    print(json.dumps(asyncio.run(run(args.redis_url, args.pairs, args.client)), indent=2))


if __name__ == "__main__":
    main()
