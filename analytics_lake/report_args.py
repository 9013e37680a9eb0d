"""Validation of report arguments shared by the query layer, the CLI and the admin API: by, since, until, month.

Bad values raise ReportArgumentError naming the argument (CLI exit 2, HTTP 400); every grammar is
bounded, so no input reaches timedelta/datetime arithmetic that could overflow.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

from analytics_lake.errors import LakeInputError

# report dimension → column (day is the hive partition column, which prunes files)
DIMENSIONS: dict[str, str] = {
    "org": "org_id", "key": "key_id", "user": "user_id", "model": "model", "day": "dt",
    "endpoint": "endpoint", "release": "release", "environment": "environment",
    "error_type": "error_type", "status": "status",
}
# what each canned report can group by (here, not in query.py, so the TUI lists them without DuckDB)
SPEND_BY = ("org", "key", "model", "day", "user", "environment", "release", "endpoint")
LATENCY_BY = ("model", "endpoint", "release", "environment", "org", "key", "day")
ERRORS_BY = ("model", "error_type", "status", "endpoint", "release", "org", "key", "day")
REPORT_BY: dict[str, tuple[str, ...]] = {"spend": SPEND_BY, "latency": LATENCY_BY, "errors": ERRORS_BY}
MAX_DIMENSIONS = 4
MAX_DURATION = timedelta(days=3650)  # ten years: the longest look-back or key lifetime
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_DURATION = re.compile(r"([0-9]{1,9})([smhdw])", re.ASCII)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})", re.ASCII)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
_MAX_TEXT = 64  # longer than any valid date, timestamp or duration


class ReportArgumentError(LakeInputError):
    """A report argument is invalid; `argument` names it (by, since, month, ...)."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(message)
        self.argument = argument


def _shown(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…"


def resolve_by(by: str | Sequence[str], allowed: Sequence[str]) -> str:
    """'org' / 'org,day' / ['org', 'day'] → "org_id, dt AS day" (validated against `allowed`)."""
    names = by_names(by)
    if any(n not in allowed for n in names):
        raise ReportArgumentError("by", f"--by {_shown(str(by))!r} is invalid: expected one of {', '.join(allowed)}")
    return ", ".join(f"{DIMENSIONS[n]} AS day" if n == "day" else DIMENSIONS[n] for n in names)


def by_names(by: str | Sequence[str]) -> list[str]:
    """The dimension names of a --by value: known, distinct, at most MAX_DIMENSIONS of them."""
    names = [p.strip() for p in by.split(",", MAX_DIMENSIONS)] if isinstance(by, str) else list(by)
    if not names or len(names) > MAX_DIMENSIONS or len(set(names)) != len(names) \
            or any(n not in DIMENSIONS for n in names):
        raise ReportArgumentError("by", f"--by {_shown(str(by))!r} is invalid: expected up to {MAX_DIMENSIONS} "
                                        f"distinct names of {', '.join(DIMENSIONS)}")
    return names


def parse_duration(text: str, *, argument: str = "duration", maximum: timedelta = MAX_DURATION) -> timedelta:
    """'30d', '12h', '90m', '45s', '2w' → timedelta, positive and at most `maximum`."""
    m = _DURATION.fullmatch(text.strip()) if len(text) <= _MAX_TEXT else None
    seconds = int(m.group(1)) * _SECONDS[m.group(2)] if m else 0
    if not 0 < seconds <= maximum.total_seconds():
        raise ReportArgumentError(argument, f"--{argument} {_shown(text)!r} is invalid: expected a duration like "
                                            f"30d, 12h or 90m, at most {maximum.days}d")
    return timedelta(seconds=seconds)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """'7d', '24h', '30m', '2w' (relative) or 'YYYY-MM-DD' / ISO timestamp (absolute, UTC if naive)."""
    now = now or datetime.now(UTC)
    if _DURATION.fullmatch(text.strip()):
        return now - parse_duration(text, argument="since")
    invalid = ReportArgumentError("since", f"--since {_shown(text)!r} is invalid: expected e.g. 7d, 24h, 30m "
                                           f"(at most {MAX_DURATION.days}d) or a date from 1970 on like 2026-01-31")
    if len(text) > _MAX_TEXT:
        raise invalid
    try:
        moment = datetime.fromisoformat(text.strip())
        # In UTC: the partition filter compares the date, and an offset near year 1 or 9999 overflows.
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError) as e:
        raise invalid from e
    if moment < EARLIEST:
        raise invalid
    return moment


def since_bound(since: datetime | timedelta | str | None) -> datetime | None:
    if since is None:
        return None
    if isinstance(since, str):
        return parse_since(since)
    if isinstance(since, timedelta):
        if not timedelta(0) <= since <= MAX_DURATION:
            raise ReportArgumentError("since", f"since {since} is invalid: expected at most {MAX_DURATION.days}d")
        return datetime.now(UTC) - since
    return since.astimezone(UTC) if since.tzinfo else since.replace(tzinfo=UTC)  # UTC: partitions are UTC days


def parse_until(text: str, now: datetime | None = None) -> datetime:
    """The exclusive end of a date range: like `parse_since`, except that a bare date means the end of
    that day ('2026-01-31' → 2026-02-01T00:00Z), so `since 2026-01-01 until 2026-01-31` is all of January."""
    try:
        moment = parse_since(text, now)
    except ReportArgumentError as e:
        raise ReportArgumentError("until", str(e).replace("--since", "--until", 1)) from e
    if _DATE.fullmatch(text.strip()):
        try:
            moment += timedelta(days=1)
        except OverflowError as e:  # 9999-12-31: no day after it
            raise ReportArgumentError("until", f"--until {_shown(text)!r} is invalid: too far in the future") from e
    return moment


def until_bound(until: datetime | timedelta | str | None) -> datetime | None:
    """`until` as an aware datetime (exclusive); a timedelta means that long before now."""
    if until is None:
        return None
    if isinstance(until, str):
        return parse_until(until)
    if isinstance(until, timedelta):
        if not timedelta(0) <= until <= MAX_DURATION:
            raise ReportArgumentError("until", f"until {until} is invalid: expected at most {MAX_DURATION.days}d")
        return datetime.now(UTC) - until
    return until.astimezone(UTC) if until.tzinfo else until.replace(tzinfo=UTC)


def check_range(since: datetime | None, until: datetime | None) -> None:
    """An empty or reversed range is a mistake worth saying, not an empty report."""
    if since is not None and until is not None and until <= since:
        raise ReportArgumentError("until", f"until {until.isoformat()} is invalid: it must be after since "
                                           f"{since.isoformat()}")


def month_range(month: str) -> tuple[date, date]:
    """'2026-03' → (2026-03-01, 2026-04-01)."""
    m = _MONTH.fullmatch(month.strip())
    if not m or not 1 <= int(m.group(2)) <= 12 or not 1970 <= int(m.group(1)) <= 9998:
        raise ReportArgumentError("month", f"month {_shown(month)!r} is invalid: expected YYYY-MM")
    year, mon = int(m.group(1)), int(m.group(2))
    return date(year, mon, 1), date(year + mon // 12, mon % 12 + 1, 1)
