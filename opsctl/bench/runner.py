"""Drive load at a target: closed loop (C workers back to back) or open loop (fixed arrival rate).

Open-loop latency is measured from each request's intended send time, so a stalled target
cannot hide its queueing delay (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Awaitable, Callable

import aiohttp

from opsctl.bench.config import BenchConfig
from opsctl.bench.request import PreparedRequest, RequestFailed, prepare, send
from opsctl.bench.stats import BenchResult, Progress, Recorder, summarize_ms

# At most this many arrivals are sent in one catch-up burst before yielding to the loop.
_MAX_BURST = 256
# Timer wake-ups are rounded to ~1 ms; the last stretch before an arrival is spent yielding.
_SPIN_S = 0.0012


class _Run:
    """State of one run: the session, the request template and the recorder."""

    def __init__(self, config: BenchConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session
        self.req: PreparedRequest = prepare(config)
        self.recorder = Recorder()
        self.total = 0
        self.dropped = 0
        self.start = 0.0
        self.measure_from = 0.0
        self.stop_at = 0.0
        # open loop only: how late each request left versus its intended time (client-side lag)
        self.lags: array | None = array("d") if config.open_loop else None

    async def one(self, intended: float) -> None:
        """Send one request whose latency counts from `intended` (a perf_counter time)."""
        self.total += 1
        if self.lags is not None and intended >= self.measure_from:
            self.lags.append(time.perf_counter() - intended)
        try:
            first = await send(self.session, self.req)
        except RequestFailed as e:
            if intended >= self.measure_from:
                self.recorder.failure(e.kind, time.perf_counter())
            return
        done = time.perf_counter()
        if intended >= self.measure_from:
            ttft = (first - intended) if first is not None else None
            self.recorder.success(done - intended, ttft, done)

    async def closed_worker(self) -> None:
        stop_at = self.stop_at
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            await self.one(now)

    async def closed_loop(self) -> None:
        await asyncio.gather(*(self.closed_worker() for _ in range(self.config.concurrency)))

    async def open_loop(self) -> None:
        assert self.config.rate is not None
        interval = 1.0 / self.config.rate
        cap = self.config.max_in_flight
        in_flight: set[asyncio.Task] = set()
        n = 0
        while True:
            intended = self.start + n * interval
            if intended >= self.stop_at:
                break
            await _sleep_until(intended)
            burst = 0
            # Catch up on every arrival already due, without waiting on responses.
            while intended <= time.perf_counter() and intended < self.stop_at and burst < _MAX_BURST:
                if len(in_flight) >= cap:
                    if intended >= self.measure_from:
                        self.dropped += 1
                else:
                    task = asyncio.create_task(self.one(intended))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                n += 1
                burst += 1
                intended = self.start + n * interval
            if burst >= _MAX_BURST:
                await asyncio.sleep(0)
        if in_flight:
            await asyncio.wait(in_flight, timeout=self.config.timeout_s + 1.0)

    def progress(self) -> Progress:
        now = time.perf_counter()
        measured = self.recorder.requests
        window = now - self.measure_from
        return Progress(
            elapsed_s=now - self.start,
            total_s=self.stop_at - self.start,
            warming_up=now < self.measure_from,
            sent=self.total,
            successes=self.recorder.successes,
            errors=measured - self.recorder.successes,
            rps=measured / window if window > 0 else 0.0,
        )

    def result(self, cpu_used: float) -> BenchResult:
        cfg = self.config
        rec = self.recorder
        elapsed = max(rec.last_done, self.stop_at) - self.measure_from
        return BenchResult(
            url=self.req.url,
            model=cfg.model,
            endpoint=cfg.endpoint.value,
            mode="open" if cfg.open_loop else "closed",
            concurrency=None if cfg.open_loop else cfg.concurrency,
            rate=cfg.rate,
            stream=cfg.stream,
            duration_s=cfg.duration_s,
            elapsed_s=elapsed,
            requests=rec.requests,
            successes=rec.successes,
            errors=dict(rec.errors),
            dropped=self.dropped,
            total_requests=self.total,
            latency_ms=summarize_ms(rec.latencies),
            ttft_ms=summarize_ms(rec.ttfts),
            client_cpu_s=cpu_used,
            send_lag_ms=summarize_ms(self.lags) if self.lags is not None else None,
        )


async def run_bench(
    config: BenchConfig,
    *,
    on_measure_start: Callable[[], Awaitable[None] | None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    progress_interval_s: float = 1.0,
) -> BenchResult:
    """Run the configured load against the target and return what it measured.

    Args:
        config: a validated run description.
        on_measure_start: optional hook called once when warm-up ends (the harness samples
            server CPU time there).
        on_progress: optional callback with a `Progress` snapshot every `progress_interval_s`.

    Raises:
        InvalidRequest: if the configuration is invalid.
    """
    config.validate()
    connector = aiohttp.TCPConnector(limit=config.connection_limit, limit_per_host=0, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=config.timeout_s)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",), raise_for_status=False
    ) as session:
        run = _Run(config, session)
        cpu0 = time.process_time()
        run.start = time.perf_counter()
        run.measure_from = run.start + config.warmup_s
        run.stop_at = run.measure_from + config.duration_s
        hook_task = asyncio.create_task(_call_at(run.measure_from, on_measure_start)) if on_measure_start else None
        progress_task = (asyncio.create_task(_report_progress(run, on_progress, progress_interval_s))
                         if on_progress else None)
        try:
            if config.open_loop:
                await run.open_loop()
            else:
                await run.closed_loop()
            if hook_task is not None:
                await hook_task
        finally:
            if progress_task is not None:
                progress_task.cancel()
        return run.result(time.process_time() - cpu0)


async def _report_progress(run: _Run, callback: Callable[[Progress], None], interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        callback(run.progress())


async def _sleep_until(when: float) -> None:
    """Wake at `when` (perf_counter) within a few microseconds, not the loop's ~1 ms timer grain.

    Sleeps on the timer until _SPIN_S before, then yields to the loop (which keeps handling
    responses) until due: costs up to ~_SPIN_S of CPU per arrival, buys accurate send times.
    """
    delay = when - time.perf_counter() - _SPIN_S
    if delay > 0:
        await asyncio.sleep(delay)
    while time.perf_counter() < when:
        await asyncio.sleep(0)


async def _call_at(when: float, hook: Callable[[], Awaitable[None] | None]) -> None:
    delay = when - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    outcome = hook()
    if outcome is not None:
        await outcome


def run_bench_sync(config: BenchConfig, *, on_progress: Callable[[Progress], None] | None = None) -> BenchResult:
    """Run in a fresh event loop (uvloop when installed) — the entry point for the CLI."""
    config.validate()
    try:
        import uvloop
    except ImportError:  # uvloop is optional (absent on Windows)
        with asyncio.Runner() as runner:
            return runner.run(run_bench(config, on_progress=on_progress))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run_bench(config, on_progress=on_progress))
