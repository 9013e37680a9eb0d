"""The fleet overview's figures: successive `GET /admin/v1/fleet` answers → per model × environment rates.

The gateway only counts (cumulative since boot); this turns two answers into a window's req/s, error rate and
latency / TTFT quantiles, keeps a few minutes of history for sparklines, and merges in today's spend. Pure data
in, data out (no I/O, no clock of its own), so `opsctl tui` stays a renderer and the rules are tested on known
numbers (tests/unit/test_fleet_sampler.py).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

WINDOW_S = 10.0  # rates over ~10 s: a 2 s refresh of a quiet model would flicker between 0 and a spike
HISTORY_S = 300.0  # the sparklines' span
SPEND_EVERY_S = 30.0  # spend runs DuckDB in the gateway: not on every refresh
ERROR_ALERT = 0.01  # rows above 1 % errors are flagged
SPARK_CHARS = "▁▂▃▄▅▆▇█"

Key = tuple[str, str]  # (model, environment)


@dataclass(frozen=True)
class FleetRow:
    """One model × environment as the overview shows it. None: not measurable (yet)."""

    model: str
    environment: str
    status: str
    ready: int
    total: int
    in_flight: int
    req_s: float | None
    error_rate: float | None  # None with no request in the window
    p50_ms: float | None
    p95_ms: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    queue: float | None  # requests waiting in the pods (vLLM's num_requests_waiting, summed)
    kv_max: float | None  # the fullest pod's KV-cache use, 0..1
    spend_usd: float | None  # today (UTC); None until the spend report answered
    history: tuple[tuple[float, float], ...] = ()  # (epoch s, req/s), oldest first, the last HISTORY_S
    alert: str = ""  # "down": no ready endpoint; "errors": error rate over ERROR_ALERT; "" otherwise

    @property
    def key(self) -> str:
        """A stable row id ('@' never occurs in a registry model name)."""
        return f"{self.model}@{self.environment}"


@dataclass(frozen=True)
class FleetTotals:
    rows: int
    ready: int
    total: int
    req_s: float | None
    error_rate: float | None
    spend_usd: float | None
    alerts: int


@dataclass(frozen=True)
class FleetView:
    """What one refresh shows: rows sorted by model and environment, totals, the gateway's clock."""

    at: float  # the gateway's `now`, epoch seconds
    window_s: float | None  # the rates' window; None on the first answer (or after a restart)
    rows: tuple[FleetRow, ...]
    totals: FleetTotals


@dataclass
class _Snapshot:
    t: float
    boot_id: str
    counters: dict[Key, Mapping[str, Any]] = field(default_factory=dict)


class FleetSampler:
    """Feed it every `/admin/v1/fleet` answer (`feed`) and today's spend report (`set_spend`); thread-safe.

    Rates cover the newest answer minus the one about `window_s` before it. A changed `boot_id` (the gateway
    restarted: its counters began again) or a counter that went back starts the window again (rates None
    until the next answer); history is kept across restarts. An answer that is not newer than the last one
    (a repeated replay) returns the last view unchanged.
    """

    def __init__(self, *, window_s: float = WINDOW_S, history_s: float = HISTORY_S,
                 spend_every_s: float = SPEND_EVERY_S) -> None:
        self.window_s = window_s
        self.history_s = history_s
        self.spend_every_s = spend_every_s
        self._snapshots: deque[_Snapshot] = deque()
        self._history: dict[Key, deque[tuple[float, float]]] = {}
        self._spend: dict[Key, float] | None = None
        self._spend_at: float | None = None
        self._last: FleetView | None = None
        self._lock = threading.Lock()

    # -- spend --------------------------------------------------------------------------------

    def spend_due(self, monotonic: float) -> bool:
        """True when today's spend should be read again (first call, then every `spend_every_s`)."""
        with self._lock:
            return self._spend_at is None or monotonic - self._spend_at >= self.spend_every_s

    def set_spend(self, report: Iterable[Mapping[str, Any]], monotonic: float) -> None:
        """Today's spend from `GET /admin/v1/usage/spend?by=model,environment` (rows with cost_usd)."""
        spend: dict[Key, float] = {}
        for row in report:
            key = (str(row.get("model")), str(row.get("environment")))
            spend[key] = spend.get(key, 0.0) + float(row.get("cost_usd") or 0.0)
        with self._lock:
            self._spend, self._spend_at = spend, monotonic

    def spend_failed(self, monotonic: float) -> None:
        """The spend report failed: keep the last figures, try again after `spend_every_s`."""
        with self._lock:
            self._spend_at = monotonic

    # -- fleet answers ------------------------------------------------------------------------

    def feed(self, answer: Mapping[str, Any]) -> FleetView:
        """The view after one more `/admin/v1/fleet` answer.

        Raises:
            ValueError: the answer has no parsable `now` or no `models` list (not a fleet answer).
        """
        t, models = _parse_answer(answer)
        with self._lock:
            if self._last is not None and t <= self._last.at:
                return self._last
            snapshot = _Snapshot(t, str(answer.get("boot_id", "")),
                                 {(m["model"], m["environment"]): m for m in models})
            if self._snapshots and self._snapshots[-1].boot_id != snapshot.boot_id:
                self._snapshots.clear()
            self._snapshots.append(snapshot)
            while len(self._snapshots) > 2 and self._snapshots[1].t <= t - self.window_s:
                self._snapshots.popleft()
            base = self._snapshots[0] if len(self._snapshots) > 1 else None
            rows = tuple(self._row(m, snapshot, answer) for m in models)
            self._forget_history(set(snapshot.counters), t)
            view = FleetView(at=t, window_s=(t - base.t) if base else None, rows=rows, totals=_totals(rows))
            self._last = view
            return view

    def _row(self, model: Mapping[str, Any], now: _Snapshot, answer: Mapping[str, Any]) -> FleetRow:
        key = (str(model["model"]), str(model["environment"]))
        # The oldest answer in the window that knew this row: a model registered a moment ago has rates
        # from its second answer on, not only once the whole window has passed.
        base = next((s for s in list(self._snapshots)[:-1] if key in s.counters), None)
        window = _window(base.counters.get(key) if base else None, model, now.t - base.t if base else 0.0,
                         answer.get("latency_bounds_ms") or [], answer.get("ttft_bounds_ms") or [])
        history = self._history.setdefault(key, deque())
        if window["req_s"] is not None:
            history.append((now.t, window["req_s"]))
        while history and history[0][0] <= now.t - self.history_s:
            history.popleft()
        ends = model.get("endpoints") or {}
        ready, total = int(ends.get("ready", 0)), int(ends.get("total", 0))
        alert = "down" if ready == 0 else ("errors" if (window["error_rate"] or 0.0) > ERROR_ALERT else "")
        spend = None if self._spend is None else self._spend.get(key, 0.0)
        return FleetRow(model=key[0], environment=key[1], status=str(model.get("status", "")), ready=ready,
                        total=total, in_flight=int(ends.get("in_flight", 0)), queue=ends.get("waiting"),
                        kv_max=ends.get("kv_usage_max"), spend_usd=spend, history=tuple(history), alert=alert,
                        **window)

    def _forget_history(self, present: set[Key], t: float) -> None:
        """A model gone from the registry for longer than the history span leaves no memory behind."""
        stale = t - self.history_s
        for key in [k for k, h in self._history.items() if k not in present and (not h or h[-1][0] < stale)]:
            del self._history[key]


def _parse_answer(answer: Mapping[str, Any]) -> tuple[float, list[Mapping[str, Any]]]:
    models = answer.get("models")
    if not isinstance(models, list):
        raise ValueError("the fleet answer has no models list")
    try:
        t = datetime.fromisoformat(str(answer.get("now"))).timestamp()
    except ValueError as e:
        raise ValueError(f"the fleet answer's now is not an ISO time: {answer.get('now')!r}") from e
    return t, models


def _diff(after: Sequence[float], before: Sequence[float] | None) -> list[float] | None:
    if before is None or len(before) != len(after):
        return None
    out = [a - b for a, b in zip(after, before, strict=True)]
    return None if any(d < 0 for d in out) else out


def _window(before: Mapping[str, Any] | None, after: Mapping[str, Any], dt: float,
            latency_bounds: Sequence[float | None], ttft_bounds: Sequence[float | None]) -> dict[str, float | None]:
    """req/s, error rate and quantiles between two counter sets; all None when there is no usable base."""
    from opsctl.rollout.analysis import quantile  # the rollout gates' quantile, same buckets semantics

    none: dict[str, float | None] = dict.fromkeys(
        ("req_s", "error_rate", "p50_ms", "p95_ms", "ttft_p50_ms", "ttft_p95_ms"))
    if before is None or dt <= 0:
        return none
    counts = _diff([after.get(k, 0) for k in ("requests", "errors")], [before.get(k, 0) for k in ("requests", "errors")])
    latency = _diff(after.get("latency_buckets") or [], before.get("latency_buckets"))
    ttft = _diff(after.get("ttft_buckets") or [], before.get("ttft_buckets"))
    if counts is None or latency is None or ttft is None:
        return none  # a counter went back: the gateway's metrics began again
    requests, errors = counts
    ok_latency = len(latency) == len(latency_bounds)
    ok_ttft = len(ttft) == len(ttft_bounds)
    return {
        "req_s": requests / dt,
        "error_rate": errors / requests if requests else None,
        "p50_ms": quantile(latency, latency_bounds, 0.50) if ok_latency else None,
        "p95_ms": quantile(latency, latency_bounds, 0.95) if ok_latency else None,
        "ttft_p50_ms": quantile(ttft, ttft_bounds, 0.50) if ok_ttft else None,
        "ttft_p95_ms": quantile(ttft, ttft_bounds, 0.95) if ok_ttft else None,
    }


def _totals(rows: Sequence[FleetRow]) -> FleetTotals:
    """Fleet-wide figures: summed rates, the error rate of all requests (not a mean of rates)."""
    measured = [r for r in rows if r.req_s is not None]
    req_s = sum(r.req_s for r in measured if r.req_s is not None) if measured else None
    errors = sum((r.error_rate or 0.0) * (r.req_s or 0.0) for r in measured)
    spends = [r.spend_usd for r in rows if r.spend_usd is not None]
    return FleetTotals(rows=len(rows), ready=sum(r.ready for r in rows), total=sum(r.total for r in rows),
                       req_s=req_s, error_rate=(errors / req_s) if req_s else None,
                       spend_usd=sum(spends) if spends else None, alerts=sum(1 for r in rows if r.alert))


def sparkline(history: Sequence[tuple[float, float]], *, now: float, span_s: float = HISTORY_S,
              width: int = 12) -> str:
    """`width` characters for the last `span_s` seconds before `now`: each one the mean of its time slice,
    scaled to the largest; ' ' where there was no sample (before the console started, or a gap)."""
    if width <= 0 or span_s <= 0:
        return ""
    slices: list[list[float]] = [[] for _ in range(width)]
    start = now - span_s
    for t, value in history:
        if start < t <= now:
            # a slice ends at its right edge (start, end]: a sample taken at `now` falls in the last one
            slices[min(max(math.ceil((t - start) / span_s * width) - 1, 0), width - 1)].append(value)
    means = [sum(s) / len(s) if s else None for s in slices]
    top = max((m for m in means if m is not None), default=0.0)
    steps = len(SPARK_CHARS) - 1
    return "".join(" " if m is None else SPARK_CHARS[round(m / top * steps) if top > 0 else 0] for m in means)


def spend_since(now: datetime) -> str:
    """`since` for today's spend: the UTC date of `now` (the report reads it as that day's midnight, UTC)."""
    from datetime import UTC

    return now.astimezone(UTC).date().isoformat()
