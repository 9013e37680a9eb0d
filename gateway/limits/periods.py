"""UTC calendar periods for budgets: which day or month a timestamp falls in, and when it ends.

Budget counters are keyed by the period (YYYYMMDD, YYYYMM, or "all"), so a new period
starts from zero without any reset job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True, slots=True)
class PeriodWindow:
    """One period: `suffix` names its counters; start/end are epoch seconds (end None = never)."""

    suffix: str
    start: float | None
    end: float | None

    def contains(self, now: float) -> bool:
        return self.start is None or (self.start <= now < self.end)  # type: ignore[operator]

    @property
    def start_dt(self) -> datetime | None:
        return None if self.start is None else datetime.fromtimestamp(self.start, UTC)

    @property
    def end_dt(self) -> datetime | None:
        return None if self.end is None else datetime.fromtimestamp(self.end, UTC)


TOTAL = PeriodWindow("all", None, None)


def period_window(period: str, now: float) -> PeriodWindow:
    """The UTC calendar period ("daily", "monthly" or "total") containing epoch second `now`."""
    if period == "total":
        return TOTAL
    moment = datetime.fromtimestamp(now, UTC)
    if period == "daily":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return PeriodWindow(start.strftime("%Y%m%d"), start.timestamp(), (start + timedelta(days=1)).timestamp())
    if period == "monthly":
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        following = (start + timedelta(days=32)).replace(day=1)
        return PeriodWindow(start.strftime("%Y%m"), start.timestamp(), following.timestamp())
    raise ValueError(f"unknown budget period {period!r}")


class PeriodCalendar:
    """`period_window` with the current window of each period cached (it changes once a day)."""

    __slots__ = ("_current",)

    def __init__(self) -> None:
        self._current: dict[str, PeriodWindow] = {}

    def window(self, period: str, now: float) -> PeriodWindow:
        cached = self._current.get(period)
        if cached is not None and cached.contains(now):
            return cached
        window = period_window(period, now)
        self._current[period] = window
        return window
