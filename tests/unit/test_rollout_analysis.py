"""Rollout analysis: quantiles from log-scale buckets, window diffs of analysis snapshots, gate verdicts."""

from __future__ import annotations

import bisect
import json
import math
import random

import pytest

from gateway.admin.analysis import BUCKET_BOUNDS_MS, release_stats
from gateway.observability.metrics import Metrics
from opsctl.rollout.analysis import (
    EMPTY,
    AnalysisError,
    AnalysisReset,
    GateResult,
    WindowStats,
    enough,
    evaluate,
    failure_reason,
    passed,
    quantile,
    window,
)
from opsctl.rollout.playbook import Gates

BOUNDS = BUCKET_BOUNDS_MS  # the gateway's own: 1 ms × 1.25^k up to 120 s, then +inf (None)


def bucketize(samples_ms: list[float]) -> list[int]:
    finite = BOUNDS[:-1]
    counts = [0] * len(BOUNDS)
    for value in samples_ms:
        counts[bisect.bisect_left(finite, value)] += 1  # le: a value equal to a bound falls in that bucket
    return counts


def exact(samples_ms: list[float], q: float) -> float:
    ordered = sorted(samples_ms)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# --- quantile -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("median_ms", "sigma"), [(200.0, 0.6), (12.0, 1.2), (3000.0, 0.3)])
def test_quantile_matches_exact_quantiles_of_log_normal_data(median_ms, sigma):
    rng = random.Random(9)
    samples = [rng.lognormvariate(math.log(median_ms), sigma) for _ in range(20_000)]
    counts = bucketize(samples)
    for q in (0.5, 0.9, 0.95, 0.99):
        truth, estimate = exact(samples, q), quantile(counts, BOUNDS, q)
        # within the resolution of one bucket (25 % wide), and in practice much closer
        assert truth / 1.25 <= estimate <= truth * 1.25
        assert abs(estimate - truth) / truth < 0.03, (q, truth, estimate)


def test_quantile_edges():
    assert quantile([0] * len(BOUNDS), BOUNDS, 0.95) is None
    assert quantile([], [], 0.5) is None
    assert quantile([4, 0, 0], [10.0, 20.0, None], 0.5) == pytest.approx(5.0)  # first bucket: linear from 0
    assert quantile([0, 2, 0], [10.0, 20.0, None], 0.5) == pytest.approx(10 * 2 ** 0.5)  # log-linear
    assert quantile([0, 0, 7], [10.0, 20.0, None], 0.99) == 20.0  # +inf bucket: the last finite bound
    assert quantile([1, 1, 1], [10.0, 20.0, None], 0.0) == 0.0
    assert quantile([0, 1, 1], [10.0, 20.0, None], 1.0) == 20.0
    with pytest.raises(ValueError, match="between 0 and 1"):
        quantile([1], [None], 1.5)
    with pytest.raises(ValueError, match="2 bucket counts for 3 bounds"):
        quantile([1, 2], [1.0, 2.0, None], 0.5)


# --- window -------------------------------------------------------------------------------------------------

def snapshot(boot: str = "b1", **releases: dict) -> dict:
    """An analysis JSON with {release: {"live": S, "shadow": S}} filled from keyword figures."""
    def stats(requests=0, errors=0, client_errors=0, latency=(), ttft=()):
        return {"requests": requests, "errors": errors, "client_errors": client_errors,
                "latency_buckets": bucketize(list(latency)), "ttft_buckets": bucketize(list(ttft)),
                "ttft_count": len(ttft), "latency_sum_ms": float(sum(latency))}
    return {"model": "m", "environment": "production", "boot_id": boot, "bucket_bounds_ms": list(BOUNDS),
            "releases": {name: {t: stats(**figures.get(t, {})) for t in ("live", "shadow")}
                         for name, figures in releases.items()},
            "endpoints": []}


def test_window_is_the_difference_of_two_snapshots():
    before = snapshot(stable={"live": {"requests": 100, "errors": 1, "latency": [50] * 100}})
    after = snapshot(stable={"live": {"requests": 300, "errors": 5, "client_errors": 7,
                                      "latency": [50] * 100 + [100] * 200, "ttft": [20] * 40}},
                     canary={"shadow": {"requests": 10, "errors": 1, "latency": [80] * 10}})
    stable = window(before, after, "stable")
    assert (stable.requests, stable.errors, stable.client_errors, stable.ttft_count) == (200, 4, 7, 40)
    assert stable.error_rate == pytest.approx(0.02)
    # only the 100 ms requests are in the window: both quantiles lie in 100 ms's bucket (86.7, 108.4]
    assert 86.7 < stable.p50_ms < stable.p95_ms <= 108.4
    assert 18.19 < stable.ttft_p95_ms <= 22.737  # 20 ms's bucket
    shadow = window(before, after, "canary", "shadow")  # absent before: zeros
    assert (shadow.requests, shadow.errors, shadow.error_rate) == (10, 1, 0.1)
    assert window(before, after, "canary") == EMPTY  # no live traffic
    assert window(before, after, "nobody") == EMPTY


def test_window_restarts_when_the_gateway_restarted():
    with pytest.raises(AnalysisReset, match="restarted"):
        window(snapshot("b1"), snapshot("b2"), "stable")
    with pytest.raises(AnalysisReset, match="requests counter went back"):
        window(snapshot(stable={"live": {"requests": 5}}), snapshot(stable={"live": {"requests": 3}}), "stable")
    changed = {**snapshot(), "bucket_bounds_ms": [1.0, None]}
    with pytest.raises(AnalysisReset, match="buckets changed"):
        window(snapshot(), changed, "stable")


@pytest.mark.parametrize("mangle", [
    lambda s: s.pop("bucket_bounds_ms"),
    lambda s: s.update(releases=[]),
    lambda s: s["releases"]["r"]["live"].update(requests="many"),
    lambda s: s["releases"]["r"]["live"].update(latency_buckets=[1, 2]),
    lambda s: s["releases"]["r"].update(live=[1]),
])
def test_window_refuses_malformed_snapshots(mangle):
    before, after = snapshot(r={}), snapshot(r={})
    mangle(after)
    if "bucket_bounds_ms" not in after:
        before.pop("bucket_bounds_ms")
    with pytest.raises(AnalysisError):
        window(before, after, "r")


def test_window_of_the_gateways_real_counters():
    """Figures recorded by the gateway's metrics, read back the way GET /admin/v1/analysis serves them."""
    metrics = Metrics()

    def snap() -> dict:
        return json.loads(json.dumps({"boot_id": metrics.boot_id, "bucket_bounds_ms": BUCKET_BOUNDS_MS,
                                      "releases": release_stats(metrics.release_families(), "m", "production")}))

    canary = metrics.release_series("m", "production", "m-production-canary", "live")
    canary.record("ok", 0.2, 0.05)
    before = snap()
    for i in range(100):
        canary.record("error" if i < 3 else "client_error" if i < 5 else "ok", 0.1 + i / 1000, 0.05)
    stats = window(before, snap(), "m-production-canary")
    assert (stats.requests, stats.errors, stats.client_errors, stats.error_rate) == (100, 3, 2, 0.03)
    assert stats.p95_ms == pytest.approx(195, rel=0.1)  # 195 ms's bucket is (169, 212]
    assert stats.ttft_p95_ms == pytest.approx(50, rel=0.25) and stats.ttft_count > 0


# --- gates --------------------------------------------------------------------------------------------------

def stats(requests: int, errors: int = 0, p95: float | None = 100.0, ttft: float | None = None) -> WindowStats:
    return WindowStats(requests=requests, errors=errors, client_errors=0,
                       error_rate=errors / requests if requests else 0.0, p50_ms=p95, p95_ms=p95,
                       ttft_p95_ms=ttft, ttft_count=0 if ttft is None else requests)


def by_name(results: list[GateResult]) -> dict[str, GateResult]:
    return {r.name: r for r in results}


def test_evaluate_known_numbers():
    gates = Gates()  # 2 % errors, +1 point vs stable, p95 ≤ 1.5 × stable + 50 ms, TTFT likewise
    new, stable = stats(200, errors=3, p95=190.0, ttft=80.0), stats(1000, errors=5, p95=100.0, ttft=40.0)
    results = evaluate(gates, new, stable)
    assert [r.name for r in results] == ["min_requests", "max_error_rate", "max_error_rate_increase",
                                         "max_p95_latency_ratio", "max_p95_ttft_ratio"]
    r = by_name(results)
    assert r["min_requests"].passed and r["min_requests"].detail == "200 requests ≥ 20"
    assert r["max_error_rate"].passed and r["max_error_rate"].value == pytest.approx(0.015)
    assert r["max_error_rate"].detail == "error rate 1.5% (3/200) ≤ 2%"
    assert r["max_error_rate_increase"].value == pytest.approx(0.01) and r["max_error_rate_increase"].passed
    assert r["max_p95_latency_ratio"].threshold == 200.0 and r["max_p95_latency_ratio"].passed
    assert r["max_p95_latency_ratio"].detail == "p95 latency 190 ms ≤ 1.5 × 100 ms + 50 ms = 200 ms"
    assert r["max_p95_ttft_ratio"].threshold == 110.0 and r["max_p95_ttft_ratio"].passed
    assert passed(results) and failure_reason(results) is None

    bad = evaluate(gates, stats(200, errors=10, p95=260.0, ttft=120.0), stable)
    r = by_name(bad)
    assert not r["max_error_rate"].passed and r["max_error_rate"].detail == "error rate 5% (10/200) > 2%"
    assert not r["max_error_rate_increase"].passed and "+4.5% > +1%" in r["max_error_rate_increase"].detail
    assert not r["max_p95_latency_ratio"].passed and not r["max_p95_ttft_ratio"].passed
    assert not passed(bad)
    assert failure_reason(bad).startswith("max_error_rate failed: error rate 5% (10/200) > 2%; ")


def test_not_enough_requests_and_missing_baselines():
    gates = Gates(max_error_rate_increase=0.01)
    results = evaluate(gates, stats(12, p95=None), None)
    r = by_name(results)
    assert not r["min_requests"].passed and r["min_requests"].detail == "12 of 20 requests"
    assert not enough(gates, stats(12)) and enough(gates, stats(20))
    for name in ("max_error_rate_increase", "max_p95_latency_ratio", "max_p95_ttft_ratio"):
        assert r[name].passed and r[name].skipped and r[name].detail.startswith("no baseline"), r[name]
    assert failure_reason(results) == "not enough traffic: 12 of 20 requests"
    # stable without TTFT samples (non-streaming traffic): the TTFT gate has no baseline
    r = by_name(evaluate(gates, stats(50, ttft=90.0), stats(50, ttft=None)))
    assert r["max_p95_ttft_ratio"].skipped and r["max_p95_latency_ratio"].passed
    r = by_name(evaluate(gates, stats(50, ttft=None), stats(50, ttft=30.0)))
    assert r["max_p95_ttft_ratio"].skipped and "the new release has no p95 TTFT samples" in r[
        "max_p95_ttft_ratio"].detail


def test_disabled_gates_and_min_requests_zero():
    gates = Gates(min_requests=0, max_error_rate_increase=None, max_p95_latency_ratio=None, max_p95_ttft_ratio=None)
    results = evaluate(gates, EMPTY, None)
    assert [r.name for r in results] == ["min_requests", "max_error_rate"]
    assert passed(results)
    assert json.loads(json.dumps([r.to_dict() for r in results]))[1] == {
        "name": "max_error_rate", "value": 0.0, "threshold": 0.02, "passed": True,
        "detail": "error rate 0% (0/0) ≤ 2%", "skipped": False}
