"""The SLO report from the lake: every model × environment's objectives over their window, budgets and burn rates.

Counts come from LakeQuery.sli_counts (rollups for whole hours, raw rows for the rest); the math is analytics_lake.slo.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from analytics_lake.report_args import parse_duration
from analytics_lake.slo import AVAILABILITY, BURN_WINDOWS, LATENCY, Counts, SloBook, check_window, evaluate, worst

if TYPE_CHECKING:
    import pyarrow as pa

Key = tuple[str, str]  # (model, environment)


class SliSource(Protocol):
    """What the report reads: LakeQuery.sli_counts."""

    def sli_counts(self, latency_threshold_ms: float, group_by: Sequence[str] = ..., *,
                   since: datetime | None = None, until: datetime | None = None, org: str | None = None,
                   filters: Mapping[str, str] | None = None) -> pa.Table: ...


def slo_report(source: SliSource, book: SloBook, *, model: str | None = None, environment: str | None = None,
               window: str | None = None, now: datetime | None = None) -> list[dict[str, Any]]:
    """One row per model × environment with eligible traffic in its SLO window, plus the pairs the SLO file
    names exactly (and the one --model/--env name together) without it, as "no data"; ordered by model and
    environment.

    Args:
        source: the lake (a LakeQuery).
        book: the SLO definitions.
        model, environment: only this model / environment.
        window: every SLO's window instead of its own (e.g. "7d").
        now: the end of every window (default: now).

    Raises:
        ReportArgumentError: a bad window.
        LakeError: the lake cannot be read.
    """
    if window is not None:
        window = check_window(window)
    now = now or datetime.now(UTC)
    scopes = book.scopes()
    spans: dict[str, timedelta] = {w: parse_duration(w, argument="window")
                                   for w in ({window} if window else {slo.window for _, slo in scopes})}
    spans.update(BURN_WINDOWS)
    filters = {k: v for k, v in (("model", model), ("environment", environment)) if v is not None} or None
    counts: dict[tuple[float, str], dict[Key, dict[str, Any]]] = {}
    for threshold in sorted({slo.latency_threshold_ms for _, slo in scopes}):
        for name, span in spans.items():
            table = source.sli_counts(threshold, ("model", "environment"), since=now - span, until=now,
                                      filters=filters)
            counts[threshold, name] = {(r["model"], r["environment"] or ""): r for r in table.to_pylist()}

    keys: set[Key] = set()
    for (threshold, name), rows in counts.items():
        for key, row in rows.items():
            slo = book.slo_for(*key)
            if slo.latency_threshold_ms == threshold and name == (window or slo.window) and row["eligible"]:
                keys.add(key)
    wanted = [p for p in book.named_pairs() if model in (None, p[0]) and environment in (None, p[1])]
    if model is not None and environment is not None:
        wanted.append((model, environment))
    keys.update(wanted)
    return [_row(key, book, counts, window) for key in sorted(keys)]


def _row(key: Key, book: SloBook, counts: Mapping[tuple[float, str], Mapping[Key, Mapping[str, Any]]],
         window: str | None) -> dict[str, Any]:
    slo, scope = book.slo_for(*key), book.scope_of(*key)
    span = window or slo.window

    def of(name: str) -> Mapping[str, Any]:
        return counts[slo.latency_threshold_ms, name].get(key) or {}

    def sli_counts(name: str, kind: str) -> Counts:
        row = of(name)
        if kind == AVAILABILITY:
            return Counts(int(row.get("eligible") or 0), int(row.get("server_errors") or 0))
        return Counts(int(row.get("ok") or 0), int(row.get("slow") or 0))

    objectives = {}
    for kind in (AVAILABILITY, LATENCY):
        burns = {name: sli_counts(name, kind) for name in BURN_WINDOWS}
        objectives[kind] = evaluate(slo.target(kind), sli_counts(span, kind), burns)
    objectives[LATENCY] = {"threshold_ms": slo.latency_threshold_ms, **objectives[LATENCY]}
    return {"model": key[0], "environment": key[1], "window": span,
            "status": worst([objectives[AVAILABILITY]["status"], objectives[LATENCY]["status"]]),
            "requests": int(of(span).get("requests") or 0), "slo": scope.name if scope else "defaults",
            **objectives}
