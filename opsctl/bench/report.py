"""Render a benchmark result for people (aligned table) or scripts (`--output json`).

The JSON form is `BenchResult.to_dict()`; the table flattens it into metric/value rows.
"""

from __future__ import annotations

from typing import Any

from opsctl.bench.stats import BenchResult


def _fmt_ms(summary: dict[str, float] | None, keys: tuple[str, ...]) -> str:
    if not summary:
        return "-"
    return "  ".join(f"{k} {summary[k]:.2f}" for k in keys)


def table_rows(result: BenchResult) -> list[dict[str, Any]]:
    """Metric/value rows for `opsctl.common.render` in table mode."""
    load = f"rate {result.rate:g} req/s" if result.rate is not None else f"concurrency {result.concurrency}"
    rows: list[dict[str, Any]] = [
        {"metric": "target", "value": f"{result.url} ({result.model})"},
        {"metric": "load", "value": f"{result.mode} loop, {load}, {result.duration_s:g} s"
                                    + (", stream" if result.stream else "")},
        {"metric": "requests", "value": result.requests},
        {"metric": "successes", "value": result.successes},
        {"metric": "errors", "value": ", ".join(f"{k}={v}" for k, v in sorted(result.errors.items())) or "0"},
        {"metric": "req/s", "value": f"{result.rps:.1f}"},
    ]
    if result.error_count:
        rows.append({"metric": "ok req/s", "value": f"{result.success_rps:.1f}"})
    rows.append({"metric": "latency ms", "value": _fmt_ms(result.latency_ms, ("p50", "p90", "p99", "max"))})
    if result.stream:
        rows.append({"metric": "ttft ms", "value": _fmt_ms(result.ttft_ms, ("p50", "p90", "p99", "max"))})
    if result.rate is not None:
        rows.append({"metric": "dropped", "value": result.dropped})
        rows.append({"metric": "send lag ms", "value": _fmt_ms(result.send_lag_ms, ("p50", "p99", "max"))})
    rows.append({"metric": "client cpu s", "value": f"{result.client_cpu_s:.2f}"})
    return rows
