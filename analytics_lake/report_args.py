"""Validation of report arguments shared by the query layer and the CLI: --by, --since, --month.

Bad values raise LakeInputError with a message that names the argument (CLI exit 2).
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
_SINCE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


def resolve_by(by: str | Sequence[str], allowed: Sequence[str]) -> str:
    """'org' / 'org,day' / ['org', 'day'] → "org_id, dt AS day" (validated against `allowed`)."""
    names = [p.strip() for p in by.split(",")] if isinstance(by, str) else list(by)
    if not names or any(n not in allowed for n in names):
        raise LakeInputError(f"--by {by!r} is invalid: expected one of {', '.join(allowed)}")
    return ", ".join(f"{DIMENSIONS[n]} AS day" if n == "day" else DIMENSIONS[n] for n in names)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """'7d', '24h', '30m', '2w' (relative) or 'YYYY-MM-DD' / ISO timestamp (absolute, UTC if naive)."""
    now = now or datetime.now(UTC)
    m = _SINCE.match(text.strip())
    if m:
        return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as e:
        raise LakeInputError(f"--since {text!r} is invalid: expected e.g. 7d, 24h, 30m or 2026-01-31") from e
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def since_bound(since: datetime | timedelta | str | None) -> datetime | None:
    if since is None:
        return None
    if isinstance(since, str):
        return parse_since(since)
    if isinstance(since, timedelta):
        return datetime.now(UTC) - since
    return since if since.tzinfo else since.replace(tzinfo=UTC)


def month_range(month: str) -> tuple[date, date]:
    """'2026-03' → (2026-03-01, 2026-04-01)."""
    m = _MONTH.match(month.strip())
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise LakeInputError(f"month {month!r} is invalid: expected YYYY-MM")
    year, mon = int(m.group(1)), int(m.group(2))
    return date(year, mon, 1), date(year + mon // 12, mon % 12 + 1, 1)
