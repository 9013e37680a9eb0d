"""Rollout analysis: turn two `GET /admin/v1/analysis` snapshots into per-release window figures and gate verdicts.

Pure functions over the JSON (no I/O), so the engine owns the timing and these rules are tested on known numbers.
The gateway's counters run since its process started; a window is the difference of two snapshots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from gateway.errors import FleetgateError
from opsctl.rollout.playbook import Gates


class AnalysisError(FleetgateError):
    """The analysis figures cannot be read as expected (a gateway of another version): the rollout fails."""

    status = 502
    code = "analysis_failed"


class AnalysisReset(AnalysisError):
    """The gateway restarted (or its counters went back) between the two snapshots: start the window again."""

    code = "analysis_reset"


@dataclass(frozen=True)
class WindowStats:
    """One release's traffic in one window (one traffic kind: live or shadow)."""

    requests: int
    errors: int  # 5xx, upstream failures and timeouts
    client_errors: int  # 4xx: the client's fault, not counted in error_rate
    error_rate: float  # errors / requests; 0 with no requests
    p50_ms: float | None
    p95_ms: float | None
    ttft_p95_ms: float | None
    ttft_count: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict: `value` against `threshold` (both in the gate's unit), and the same in words."""

    name: str
    value: float | None
    threshold: float | None
    passed: bool
    detail: str
    skipped: bool = False  # passed because it could not be measured (no baseline)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


EMPTY = WindowStats(requests=0, errors=0, client_errors=0, error_rate=0.0, p50_ms=None, p95_ms=None,
                    ttft_p95_ms=None, ttft_count=0)


# --- windows --------------------------------------------------------------------------------------------------

def window(before: Mapping[str, Any], after: Mapping[str, Any], release: str, traffic: str = "live") -> WindowStats:
    """What `release` served (`traffic`: live or shadow) between two analysis snapshots.

    A release absent from a snapshot had no traffic yet (zeros).

    Raises:
        AnalysisReset: the gateway restarted between the snapshots (boot_id changed, or a counter went back).
        AnalysisError: a snapshot is not analysis JSON of the expected shape.
    """
    if before.get("boot_id") != after.get("boot_id"):
        raise AnalysisReset(f"the gateway restarted during the analysis window (boot {before.get('boot_id')} → "
                            f"{after.get('boot_id')}); starting the window again")
    bounds = after.get("bucket_bounds_ms")
    if not isinstance(bounds, list) or not bounds:
        raise AnalysisError("the analysis snapshot has no bucket_bounds_ms")
    if before.get("bucket_bounds_ms") != bounds:
        raise AnalysisReset("the gateway's latency buckets changed during the analysis window; starting again")
    old, new = _counters(before, release, traffic, len(bounds)), _counters(after, release, traffic, len(bounds))
    diff = {key: _minus(new[key], old[key], key) for key in new}
    requests, errors = diff["requests"], diff["errors"]
    return WindowStats(requests=requests, errors=errors, client_errors=diff["client_errors"],
                       error_rate=errors / requests if requests else 0.0,
                       p50_ms=quantile(diff["latency_buckets"], bounds, 0.50),
                       p95_ms=quantile(diff["latency_buckets"], bounds, 0.95),
                       ttft_p95_ms=quantile(diff["ttft_buckets"], bounds, 0.95), ttft_count=diff["ttft_count"])


def _counters(snapshot: Mapping[str, Any], release: str, traffic: str, buckets: int) -> dict[str, Any]:
    releases = snapshot.get("releases")
    if not isinstance(releases, Mapping):
        raise AnalysisError("the analysis snapshot has no releases mapping")
    entry = (releases.get(release) or {}).get(traffic) or {}
    if not isinstance(entry, Mapping):
        raise AnalysisError(f"analysis figures of {release} ({traffic}) are not a mapping")
    out: dict[str, Any] = {}
    for key in ("requests", "errors", "client_errors", "ttft_count"):
        out[key] = _count(entry.get(key, 0), f"{release}.{traffic}.{key}")
    for key in ("latency_buckets", "ttft_buckets"):
        counts = entry.get(key) or [0] * buckets
        if not isinstance(counts, list) or len(counts) != buckets:
            got = len(counts) if isinstance(counts, list) else "no"
            raise AnalysisError(f"analysis {release}.{traffic}.{key} has {got} buckets, expected {buckets}")
        out[key] = [_count(c, f"{release}.{traffic}.{key}") for c in counts]
    return out


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AnalysisError(f"analysis {where} is not a count: {value!r}")
    return int(value)


def _minus(after: Any, before: Any, key: str) -> Any:
    if isinstance(after, list):
        return [_minus(a, b, key) for a, b in zip(after, before, strict=True)]
    if after < before:
        raise AnalysisReset(f"the gateway's {key} counter went back during the analysis window; starting again")
    return after - before


def quantile(buckets: Sequence[int], bounds_ms: Sequence[float | None], q: float) -> float | None:
    """The q-quantile (0..1) of values counted per bucket (NOT cumulative); None when there are none.

    `bounds_ms` are the buckets' upper bounds, the last one None (+inf). Inside a bucket values are assumed
    spread evenly on a log scale (the buckets grow geometrically); the first bucket, from 0, linearly. A quantile
    in the +inf bucket is reported as the last finite bound (a lower bound of the truth).

    Raises:
        ValueError: q outside 0..1, or buckets and bounds of different lengths.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is not between 0 and 1")
    if len(buckets) != len(bounds_ms):
        raise ValueError(f"{len(buckets)} bucket counts for {len(bounds_ms)} bounds")
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(buckets):
        if count <= 0:
            continue
        if seen + count >= rank:
            fraction = min(max((rank - seen) / count, 0.0), 1.0)
            lower = bounds_ms[i - 1] if i > 0 else 0.0
            upper = bounds_ms[i]
            if upper is None:
                return lower
            if lower is None or lower <= 0:
                return upper * fraction
            return lower * (upper / lower) ** fraction
        seen += count
    return None  # not reached: the running count ends at total ≥ rank


# --- gates ----------------------------------------------------------------------------------------------------

def enough(gates: Gates, new: WindowStats) -> bool:
    """Whether the window holds enough of the new release's requests to judge it."""
    return new.requests >= gates.min_requests


def evaluate(gates: Gates, new: WindowStats, stable: WindowStats | None) -> list[GateResult]:
    """Every gate's verdict on the new release's window against stable's: min_requests first, then the enabled
    gates in the order of Gates' fields. A comparison without data to compare (no stable traffic, no TTFT
    samples) is skipped as passed with detail "no baseline …"."""
    ok = enough(gates, new)
    results = [GateResult("min_requests", float(new.requests), float(gates.min_requests), ok,
                          f"{new.requests} requests ≥ {gates.min_requests}" if ok else
                          f"{new.requests} of {gates.min_requests} requests")]
    results.append(_error_rate_gate(gates, new))
    if gates.max_error_rate_increase is not None:
        results.append(_increase_gate(gates.max_error_rate_increase, new, stable))
    if gates.max_p95_latency_ratio is not None:
        results.append(_ratio_gate("max_p95_latency_ratio", "p95 latency", gates.max_p95_latency_ratio,
                                   gates.latency_slack_ms, new.p95_ms, None if stable is None else stable.p95_ms))
    if gates.max_p95_ttft_ratio is not None:
        results.append(_ratio_gate("max_p95_ttft_ratio", "p95 TTFT", gates.max_p95_ttft_ratio, gates.latency_slack_ms,
                                   new.ttft_p95_ms, None if stable is None else stable.ttft_p95_ms))
    if gates.max_p95_latency_ms is not None:
        results.append(_limit_gate("max_p95_latency_ms", "p95 latency", gates.max_p95_latency_ms, new.p95_ms))
    return results


def _error_rate_gate(gates: Gates, new: WindowStats) -> GateResult:
    """The new release's error rate against max_error_rate; up to `tolerated_errors` errors pass whatever their
    rate (one error in a 20-request window is 5 %: noise, not a verdict on a 0.1 %-budget SLO)."""
    rate, limit = new.error_rate, gates.max_error_rate
    detail = f"error rate {_pct(rate)} ({new.errors}/{new.requests}) {_cmp(rate, limit)} {_pct(limit)}"
    tolerated = rate > limit and new.errors <= gates.tolerated_errors
    if tolerated:
        detail += f", but {new.errors} error{'s' if new.errors > 1 else ''} ≤ {gates.tolerated_errors} tolerated"
    return GateResult("max_error_rate", rate, limit, rate <= limit or tolerated, detail)


def _increase_gate(limit: float, new: WindowStats, stable: WindowStats | None) -> GateResult:
    name = "max_error_rate_increase"
    if stable is None or stable.requests == 0:
        return GateResult(name, None, limit, True, "no baseline: stable served no requests in the window", True)
    increase = new.error_rate - stable.error_rate
    return GateResult(name, increase, limit, increase <= limit,
                      f"error rate {_pct(new.error_rate)} vs stable {_pct(stable.error_rate)}: "
                      f"{_points(increase)} {_cmp(increase, limit)} {_points(limit)}")


def _ratio_gate(name: str, what: str, ratio: float, slack_ms: float, new_ms: float | None,
                stable_ms: float | None) -> GateResult:
    if stable_ms is None:
        return GateResult(name, new_ms, None, True, f"no baseline: stable has no {what} samples in the window", True)
    if new_ms is None:
        return GateResult(name, None, None, True, f"no baseline: the new release has no {what} samples", True)
    limit = ratio * stable_ms + slack_ms
    return GateResult(name, new_ms, limit, new_ms <= limit,
                      f"{what} {_ms(new_ms)} {_cmp(new_ms, limit)} {ratio:g} × {_ms(stable_ms)} + "
                      f"{slack_ms:g} ms = {_ms(limit)}")


def _limit_gate(name: str, what: str, limit_ms: float, new_ms: float | None) -> GateResult:
    if new_ms is None:
        return GateResult(name, None, limit_ms, True, f"no {what} samples from the new release", True)
    return GateResult(name, new_ms, limit_ms, new_ms <= limit_ms,
                      f"{what} {_ms(new_ms)} {_cmp(new_ms, limit_ms)} {_ms(limit_ms)}")


def passed(results: Sequence[GateResult]) -> bool:
    return all(r.passed for r in results)


def failure_reason(results: Sequence[GateResult]) -> str | None:
    """Why the window failed, in one line ("not enough traffic: 12 of 20 requests"); None when it passed."""
    failed = [r for r in results if not r.passed]
    if not failed:
        return None
    if failed[0].name == "min_requests":
        return f"not enough traffic: {failed[0].detail}"
    return "; ".join(f"{r.name} failed: {r.detail}" for r in failed)


def _cmp(value: float, limit: float) -> str:
    return "≤" if value <= limit else ">"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.2f}".rstrip("0").rstrip(".") + "%"


def _points(fraction: float) -> str:
    sign = "+" if fraction >= 0 else "−"
    return f"{sign}{_pct(abs(fraction))}"


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if value >= 10 else f"{value:.2g} ms"
