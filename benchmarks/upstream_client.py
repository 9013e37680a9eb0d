"""Benchmark: client CPU per upstream request and req/s, UpstreamPool vs aiohttp.ClientSession.

Run: python -m benchmarks.upstream_client [--requests 4000] [--rounds 5] [--no-uvloop]
The simulator runs as a child process (pinned to the last CPU when there are two or more);
CPU is this process's only, so it is the client's cost: send, parse, read or stream the body.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson

from benchmarks.services import Service, free_port, http_status
from gateway.upstream import UpstreamPool

MODEL = "sim"
PATH = "/v1/chat/completions"
REPO = Path(__file__).resolve().parent.parent
OneCall = Callable[[], Awaitable[int]]


def _payload(stream: bool) -> bytes:
    body: dict = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
                  "max_tokens": 16}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return orjson.dumps(body)


async def _timed(calls: int, concurrency: int, one: OneCall) -> tuple[float, float]:
    """(CPU µs per call, calls per second) for `calls` calls spread over `concurrency` tasks."""
    per_task = calls // concurrency

    async def worker() -> int:
        received = 0
        for _ in range(per_task):
            received += await one()
        return received

    cpu, wall = time.process_time(), time.perf_counter()
    sizes = await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = per_task * concurrency
    assert all(sizes), "every request must return a body"
    return cpu / done * 1e6, done / wall


def _summary(calls: int, runs: list[tuple[float, float]]) -> dict[str, float]:
    """Best and median over rounds: other processes on the host only ever add CPU time."""
    cpu, rate = zip(*runs)
    return {"n": calls, "cpu_us_min": round(min(cpu), 1), "cpu_us_median": round(statistics.median(cpu), 1),
            "per_s_max": round(max(rate)), "per_s_median": round(statistics.median(rate))}


class _RawClient(asyncio.Protocol):
    """The floor: one prebuilt request written to one connection, the answer framed by Content-Length.

    No parsing beyond that and no pooling: what the event loop and the syscalls cost on their own.
    """

    def __init__(self) -> None:
        self.buf = b""
        self.waiter: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        length = int(self.buf.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        if len(self.buf) >= end + 4 + length and self.waiter is not None:
            self.waiter.set_result(len(self.buf))
            self.buf = b""


async def _raw_call(url: str) -> tuple[OneCall, asyncio.Transport]:
    host, port = url.removeprefix("http://").split(":")
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(_RawClient, host, int(port))
    body = _payload(False)
    request = b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        PATH.encode(), url.removeprefix("http://").encode(), len(body), body)

    async def one() -> int:
        proto.waiter = loop.create_future()
        transport.write(request)
        return await proto.waiter

    return one, transport


def _pool_calls(pool: UpstreamPool, url: str) -> dict[str, OneCall]:
    unary, stream = _payload(False), _payload(True)
    headers = [("X-Request-ID", "0123456789abcdef0123456789abcdef")]

    async def one_unary() -> int:
        resp = await pool.request(url, PATH, unary, headers)
        try:
            data = await resp.read()
        finally:
            resp.release()
        assert resp.status == 200
        return len(data)

    async def one_stream() -> int:
        resp = await pool.request(url, PATH, stream, headers)
        received = 0
        try:
            async for chunk in resp.iter_chunks():
                received += len(chunk)
        finally:
            resp.release()
        assert resp.status == 200
        return received

    return {"unary": one_unary, "stream": one_stream}


def _aiohttp_calls(session: aiohttp.ClientSession, url: str) -> dict[str, OneCall]:
    """How gateway/proxy/dataplane.py called upstream before gateway/upstream/ replaced aiohttp's client."""
    unary, stream = _payload(False), _payload(True)
    headers = {"Content-Type": "application/json", "X-Request-ID": "0123456789abcdef0123456789abcdef"}

    async def one_unary() -> int:
        resp = await session.post(url + PATH, data=unary, headers=headers)
        try:
            data = await resp.read()
        finally:
            resp.release()
        assert resp.status == 200
        return len(data)

    async def one_stream() -> int:
        resp = await session.post(url + PATH, data=stream, headers=headers)
        received = 0
        try:
            async for chunk in resp.content.iter_any():
                received += len(chunk)
        finally:
            resp.release()
        assert resp.status == 200
        return received

    return {"unary": one_unary, "stream": one_stream}


async def run(url: str, requests: int, rounds: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    raw, raw_transport = await _raw_call(url)
    pool = UpstreamPool(connect_timeout_s=5.0, read_timeout_s=600.0)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=600.0), skip_auto_headers=("User-Agent",))
    try:
        clients = {"pool": _pool_calls(pool, url), "aiohttp": _aiohttp_calls(session, url)}
        for name, calls in clients.items():  # warm up: connections, caches
            for call in calls.values():
                await _timed(500, 32, call)
        await _timed(200, 1, raw)
        plan: list[tuple[str, int, OneCall]] = [("floor_unary_c1", 1, raw)]
        for kind in ("unary", "stream"):
            for concurrency in (1, 32):
                plan += [(f"{name}_{kind}_c{concurrency}", concurrency, calls[kind]) for name, calls in clients.items()]
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in plan}
        for _ in range(rounds):  # interleaved, so a burst of load elsewhere hits every client alike
            for name, concurrency, call in plan:
                runs[name].append(await _timed(requests, concurrency, call))
        results.update({name: _summary(requests, runs[name]) for name, _, _ in plan})
    finally:
        raw_transport.close()
        await pool.close()
        await session.close()
    results["pool_stats"] = {"opened": pool.stats.opened, "reused": pool.stats.reused,
                             "stale_retries": pool.stats.stale_retries}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests per measurement round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per measurement (best and median reported)")
    parser.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="fg-bench-upstream-"))
    port = free_port()
    cpus = sorted(os.sched_getaffinity(0))
    sim = Service("simulator", [sys.executable, "-m", "opsctl.sim", "--model", MODEL, "--port", str(port)],
                  env=dict(os.environ), log_dir=tmp, cwd=REPO, cpus={cpus[-1]} if len(cpus) > 1 else None)
    try:
        sim.start()
        url = f"http://127.0.0.1:{port}"
        sim.wait_ready(lambda: http_status(url + "/health") == 200, timeout=30, what="healthy")
        if len(cpus) > 1:
            os.sched_setaffinity(0, set(cpus[:-1]))
        if args.uvloop:
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        else:
            runner = asyncio.Runner()
        with runner:
            print(json.dumps(runner.run(run(url, args.requests, args.rounds)), indent=2))
    finally:
        sim.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
