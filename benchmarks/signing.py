"""Benchmark: the hot-path cost of signed requests — gateway CPU per request, bearer key vs signing key.

Starts Redis, a simulator pod and one gateway process (`opsctl gateway serve`, 1 worker, Redis limits,
an org budget and the usage spool on), then sends the same open-loop load (a fixed request rate) with a
bearer key and with a signing key, in alternating rounds, charging the gateway process's CPU to each. Also times,
in this process, `parse_header`, `verify()` and the Authenticator's bearer and signed paths.

Run: .venv/bin/python -m benchmarks.signing [--rate 1000] [--duration 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.gateway import BIN, MODEL, Bench, Options  # noqa: E402
from benchmarks.services import ServiceFailed, run_cli  # noqa: E402
from gateway.auth.authenticator import Authenticator  # noqa: E402
from gateway.auth.secrets import generate_api_key  # noqa: E402
from gateway.auth.signing import (  # noqa: E402
    SIGNATURE_HEADER,
    LocalNonces,
    RedisNonces,
    derive_signing_key,
    parse_header,
    signature_header,
    verify,
)
from gateway.redis.client import FastRedis  # noqa: E402
from gateway.redis.keyspace import RedisKeys  # noqa: E402
from gateway.store import open_store  # noqa: E402

PATH = "/v1/chat/completions"
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
                   "max_tokens": 16}).encode()


def create_keys(gw_env: dict[str, str], sim_url: str) -> tuple[str, dict]:
    """One org with a budget; a bearer key and a signing key, both with (high) rpm/tpm limits."""
    opsctl = [str(BIN / "opsctl")]
    run_cli([*opsctl, "org", "create", "bench", "-o", "json"], env=gw_env)
    run_cli([*opsctl, "budget", "set", "bench", "1000000", "--period", "monthly", "-o", "json"], env=gw_env)
    run_cli([*opsctl, "registry", "register", MODEL, "--endpoint", sim_url, "--input-price", "1",
             "--output-price", "2", "-o", "json"], env=gw_env)
    limits = ["--rpm", "10000000", "--tpm", "1000000000", "-o", "json"]
    bearer = json.loads(run_cli([*opsctl, "key", "create", "--org", "bench", "--name", "bearer", *limits],
                                env=gw_env))
    signed = json.loads(run_cli([*opsctl, "key", "create", "--org", "bench", "--name", "signed",
                                 "--require-signature", *limits], env=gw_env))
    return bearer["key"], signed


async def fixed_rate(url: str, headers: Callable[[], dict[str, str]], *, rate: float, duration: float,
                     max_in_flight: int = 256) -> tuple[Counter, list[float]]:
    """Open loop: one request every 1/`rate` s for `duration` s (the same load for every mode, whatever
    the client costs). Returns the statuses ("dropped" when `max_in_flight` were pending) and latencies (ms)."""
    statuses: Counter = Counter()
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=max_in_flight)
    async with aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",)) as session:
        async def one(intended: float) -> None:
            async with session.post(url + PATH, data=BODY, headers=headers()) as r:
                await r.read()
                statuses[r.status] += 1
            latencies.append((time.perf_counter() - intended) * 1000)

        pending: set[asyncio.Task] = set()
        start = time.perf_counter()
        for i in range(int(rate * duration)):
            intended = start + i / rate
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(pending) >= max_in_flight:
                statuses["dropped"] += 1
                continue
            task = asyncio.create_task(one(intended))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
    return statuses, latencies


def load_phases(bench: Bench, gw, url: str, bearer: str, signed: dict, args: argparse.Namespace) -> dict:
    """Alternate bearer and signed rounds at the same rate; per mode: requests, errors, gateway CPU ms per
    request, latency p50/p99 ms."""
    signing_key = derive_signing_key(signed["key"])
    modes = {
        "bearer": lambda: {"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
        "signed": lambda: {SIGNATURE_HEADER: signature_header(signed["id"], signing_key, "POST", PATH, BODY),
                           "Content-Type": "application/json"},
    }
    totals = {mode: {"requests": 0, "errors": 0, "cpu_s": 0.0, "latencies": []} for mode in modes}
    for headers in modes.values():  # warm-up: caches, connections, scripts
        bench.runner.run(fixed_rate(url, headers, rate=args.rate, duration=args.warmup))
    for _ in range(args.rounds):
        for mode, headers in modes.items():
            cpu = gw.cpu_seconds()
            statuses, latencies = bench.runner.run(fixed_rate(url, headers, rate=args.rate, duration=args.duration))
            t = totals[mode]
            t["cpu_s"] += gw.cpu_seconds() - cpu
            t["requests"] += statuses[200]
            t["errors"] += sum(n for status, n in statuses.items() if status != 200)
            t["latencies"] += latencies
            print(f"  {mode:6} {dict(statuses)}", flush=True)
    return {mode: {"requests": t["requests"], "errors": t["errors"],
                   "gateway_cpu_ms_per_request": round(t["cpu_s"] / max(1, t["requests"]) * 1000, 4),
                   "p50_ms": round(statistics.median(t["latencies"]), 3),
                   "p99_ms": round(statistics.quantiles(t["latencies"], n=100)[98], 3)}
            for mode, t in totals.items()}


def time_per_call(fn: Callable[[], object], iterations: int) -> float:
    """Best-of-5 microseconds per call of `fn`."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(iterations):
            fn()
        best = min(best, time.perf_counter() - start)
    return round(best / iterations * 1e6, 2)


async def authenticate_calls(redis_url: str, state_dir: Path, count: int) -> dict[str, float]:
    """Process CPU µs per Authenticator call with the key cached (one after another, so each Redis
    round trip's wake-ups are charged too): bearer, and signed with each kind of nonce store."""
    store = open_store(f"sqlite:///{state_dir / 'auth-bench.db'}")
    await store.open()
    redis = aioredis.Redis.from_url(redis_url)
    fast = FastRedis.from_url(redis_url, timeout_s=5.0)
    try:
        org = await store.create_org("bench")
        secret, key_hash, prefix = generate_api_key()
        signing_key = derive_signing_key(secret)
        key = await store.create_api_key(org.id, name="signed", key_hash=key_hash, prefix=prefix,
                                         require_signature=True, signing_key=signing_key)
        bearer, bearer_hash, bearer_prefix = generate_api_key()
        await store.create_api_key(org.id, name="bearer", key_hash=bearer_hash, prefix=bearer_prefix)

        async def cpu_us(call: Callable[[int], Awaitable[object]]) -> float:
            await call(-1)  # warm: the key cache, the connection
            cpu = time.process_time()
            for i in range(count):
                await call(i)
            return round((time.process_time() - cpu) / count * 1e6, 1)

        auth = Authenticator(store)
        out = {"authenticate_bearer_us": await cpu_us(lambda _: auth.authenticate(f"Bearer {bearer}"))}
        nonce_stores = {"local": LocalNonces(), "redis-py": RedisNonces(redis.execute_command, RedisKeys("fgbench")),
                        "FastRedis": RedisNonces(fast.execute, RedisKeys("fgbench-fast"))}
        for name, nonces in nonce_stores.items():
            signed = Authenticator(store, nonces=nonces)
            headers = [signature_header(key.id, signing_key, "POST", PATH, BODY) for _ in range(count + 1)]
            out[f"authenticate_signed_{name}_us"] = await cpu_us(lambda i, a=signed, h=headers: a.authenticate_signed(
                parse_header(h[i]), "POST", PATH, BODY))
        return out
    finally:
        await redis.flushdb()
        await redis.aclose()
        await fast.aclose()
        await store.close()


def micro(redis_url: str, iterations: int, bench: Bench) -> dict[str, float | int]:
    signing_key = derive_signing_key("sk-fg-" + "x" * 43)
    header = signature_header("key_0123456789abcdef", signing_key, "POST", PATH, BODY)
    parsed = parse_header(header)
    assert verify(signing_key, parsed, "POST", PATH, BODY)
    local = LocalNonces()
    counter = iter(range(10**9))
    now = time.time()
    return {
        "body_bytes": len(BODY),
        "parse_header_us": time_per_call(lambda: parse_header(header), iterations),
        "verify_us": time_per_call(lambda: verify(signing_key, parsed, "POST", PATH, BODY), iterations),
        "local_nonce_claim_us": time_per_call(
            lambda: local.claim_now("key_0123456789abcdef", f"nonce-{next(counter):012d}", int(now), now),
            iterations // 10),
        **bench.runner.run(authenticate_calls(redis_url, bench.tmp, 20_000)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per round and mode (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="alternating bearer/signed rounds (default 3)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per mode (default 1)")
    p.add_argument("--rate", type=float, default=1000.0, help="requests per second, both modes (default 1000)")
    p.add_argument("--iterations", type=int, default=100_000, help="calls per micro-benchmark run")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.rounds < 1 or args.rate <= 0 or args.iterations < 10:
        p.error("--duration, --rounds, --rate and --iterations must be positive")
    opts = Options(duration=args.duration, warmup=args.warmup, concurrency=1, rate=args.rate,
                   stream_rate=1.0, workers=1, skip_litellm=True, limits=True, write_docs=False, pin_client=None,
                   command="")
    bench = Bench(opts)
    try:
        redis_url = bench.start_redis()
        sim = bench.start_simulator()
        gw = bench.start_gateway(bench.gateway_env(redis_url), 1)
        url = gw.env["FLEETGATE_GATEWAY_URL"]
        bearer, signed = create_keys(gw.env, sim.url)
        results = {"load": load_phases(bench, gw, url, bearer, signed, args),
                   "micro": micro(redis_url.rsplit("/", 1)[0] + "/1", args.iterations, bench)}
    except ServiceFailed as e:
        print(f"bench failed: {e}", file=sys.stderr)
        return 1
    finally:
        bench.close()
    load, m = results["load"], results["micro"]
    added = load["signed"]["gateway_cpu_ms_per_request"] - load["bearer"]["gateway_cpu_ms_per_request"]
    results["signed_minus_bearer_cpu_ms"] = round(added, 4)
    print(json.dumps(results, indent=2))
    print(f"\n| key ({args.rate:g} req/s) | gateway CPU ms/req | p50 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|")
    for mode, r in load.items():
        print(f"| {mode} | {r['gateway_cpu_ms_per_request']:.3f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['errors']} |")
    print(f"\nSigned − bearer: {added * 1000:+.0f} µs gateway CPU per request. In process, key cached: "
          f"authenticate() {m['authenticate_bearer_us']} µs (bearer); authenticate_signed() "
          f"{m['authenticate_signed_local_us']} µs with in-process nonces, {m['authenticate_signed_redis-py_us']} µs "
          f"with Redis through redis-py, {m['authenticate_signed_FastRedis_us']} µs through FastRedis; of which "
          f"parse_header {m['parse_header_us']} µs, verify() {m['verify_us']} µs ({m['body_bytes']}-byte body).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
