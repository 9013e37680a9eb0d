"""Exact latency percentiles from every sample, and the result of one benchmark run.

Samples are kept as floats (seconds) in compact arrays; percentiles sort once at the end.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (50.0, 90.0, 99.0)


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of already sorted values.

    Raises:
        ValueError: on an empty sequence or a percentile outside [0, 100].
    """
    if not sorted_values:
        raise ValueError("percentile of no samples")
    if not 0.0 <= pct <= 100.0:
        raise ValueError(f"percentile must be within [0, 100], got {pct}")
    rank = (len(sorted_values) - 1) * pct / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return float(sorted_values[low])
    frac = rank - low
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * frac)


def summarize_ms(samples_s: Sequence[float]) -> dict[str, float] | None:
    """p50/p90/p99/max/mean in milliseconds, or None without samples."""
    if not samples_s:
        return None
    ordered = sorted(samples_s)
    out = {f"p{pct:g}": round(percentile(ordered, pct) * 1000.0, 3) for pct in PERCENTILES}
    out["max"] = round(ordered[-1] * 1000.0, 3)
    out["mean"] = round(sum(ordered) / len(ordered) * 1000.0, 3)
    return out


@dataclass(frozen=True)
class Progress:
    """A snapshot of a running benchmark, reported about once a second."""

    elapsed_s: float
    total_s: float  # warm-up + measured duration
    warming_up: bool
    sent: int  # requests started, warm-up included
    successes: int  # measured window only, like the final result
    errors: int
    rps: float  # measured requests (ok + failed) per second so far

    def line(self) -> str:
        phase = " warm-up" if self.warming_up else ""
        return (f"bench: {self.elapsed_s:.0f}/{self.total_s:.0f} s{phase}  sent {self.sent}  ok {self.successes}"
                f"  errors {self.errors}  {self.rps:.1f} req/s")


@dataclass
class Recorder:
    """Accumulates outcomes of requests inside the measurement window."""

    latencies: array = field(default_factory=lambda: array("d"))
    ttfts: array = field(default_factory=lambda: array("d"))
    errors: Counter = field(default_factory=Counter)
    successes: int = 0
    last_done: float = 0.0

    def success(self, latency_s: float, ttft_s: float | None, done_at: float) -> None:
        self.successes += 1
        self.latencies.append(latency_s)
        if ttft_s is not None:
            self.ttfts.append(ttft_s)
        if done_at > self.last_done:
            self.last_done = done_at

    def failure(self, kind: str, done_at: float) -> None:
        self.errors[kind] += 1
        if done_at > self.last_done:
            self.last_done = done_at

    @property
    def requests(self) -> int:
        return self.successes + sum(self.errors.values())


@dataclass(frozen=True)
class BenchResult:
    """What a run measured; `to_dict()` is the `--output json` contract."""

    url: str
    model: str
    endpoint: str
    mode: str
    concurrency: int | None
    rate: float | None
    stream: bool
    duration_s: float
    elapsed_s: float
    requests: int
    successes: int
    errors: dict[str, int]
    dropped: int
    total_requests: int
    latency_ms: dict[str, float] | None
    ttft_ms: dict[str, float] | None
    client_cpu_s: float
    send_lag_ms: dict[str, float] | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def success_rps(self) -> float:
        return self.successes / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "model": self.model,
            "endpoint": self.endpoint,
            "mode": self.mode,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "stream": self.stream,
            "duration_s": self.duration_s,
            "elapsed_s": round(self.elapsed_s, 4),
            "requests": self.requests,
            "successes": self.successes,
            "error_count": self.error_count,
            "errors": dict(sorted(self.errors.items())),
            "dropped": self.dropped,
            "total_requests": self.total_requests,
            "rps": round(self.rps, 2),
            "success_rps": round(self.success_rps, 2),
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "client_cpu_s": round(self.client_cpu_s, 3),
            "send_lag_ms": self.send_lag_ms,
        }
