"""Query parameters of the analytics API: grouping, filters, the range, the org scope and the paging cursor.

Every bad value is a 400 naming its parameter, before anything reaches the lake.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from analytics_lake.report_args import ReportArgumentError, check_range, parse_since, parse_until
from gateway import appkeys
from gateway.admin import access
from gateway.admin.inputs import query_str
from gateway.errors import InvalidRequest, NotFound

DIMENSIONS = ("org", "key", "model", "environment", "release", "status_class", "day", "hour")
FILTERS = ("key", "model", "environment", "release", "status_class")  # exact-match query parameters (org apart)
STATUS_CLASSES = ("2xx", "4xx", "429", "499", "5xx")
MAX_GROUP_BY = 6
DEFAULT_WINDOW = timedelta(days=7)  # since, when not given: this long before until (or now)
MAX_OFFSET = 10**9
_CURSOR_VERSION = 1
_ORG_ID = re.compile(r"org_[0-9a-f]{16}", re.ASCII)  # as gateway/store/ids.py makes them


def known_params(request: web.Request, allowed: Sequence[str]) -> None:
    """A misspelt parameter (`group-by`, `by`) must not be silently ignored."""
    for name in request.query:
        if name not in allowed:
            shown = name if len(name) <= 64 else name[:64] + "…"
            raise InvalidRequest(f"Unknown query parameter {shown!r}: expected {', '.join(allowed)}.", param=shown)


def group_by_of(request: web.Request, default: Sequence[str]) -> tuple[str, ...]:
    raw = query_str(request, "group_by", max_length=256)
    if raw is None:
        return tuple(default)
    names = [name.strip() for name in raw.split(",")]
    if len(names) > MAX_GROUP_BY or len(names) != len(set(names)) or any(name not in DIMENSIONS for name in names):
        raise InvalidRequest(f"'group_by' must be up to {MAX_GROUP_BY} distinct names of {', '.join(DIMENSIONS)}, "
                             "comma-separated.", param="group_by")
    return tuple(names)


def filters_of(request: web.Request) -> dict[str, str]:
    filters = {name: value for name in FILTERS if (value := query_str(request, name)) is not None}
    if "status_class" in filters and filters["status_class"] not in STATUS_CLASSES:
        raise InvalidRequest(f"'status_class' must be one of {', '.join(STATUS_CLASSES)}.", param="status_class")
    return filters


def range_of(request: web.Request, now: datetime) -> tuple[datetime, datetime]:
    """[since, until): `until` defaults to now, `since` to DEFAULT_WINDOW before `until`."""
    try:
        until_text = query_str(request, "until", max_length=64)
        until = parse_until(until_text, now) if until_text else now
        since_text = query_str(request, "since", max_length=64)
        since = parse_since(since_text, now) if since_text else until - DEFAULT_WINDOW
        check_range(since, until)
    except ReportArgumentError as e:
        raise InvalidRequest(str(e), param=e.argument) from e
    except OverflowError as e:  # until - 7d before year 1
        raise InvalidRequest("'until' is too early.", param="until") from e
    return since, until


async def org_filter(request: web.Request) -> str | None:
    """The org the answer is limited to: the caller's own (an API key or org principal, whatever it
    asks), else `?org=` (name or id) for a global caller, else None (every org)."""
    scoped = access.org_scope(request)
    if scoped is not None:
        return scoped
    ref = query_str(request, "org")
    if ref is None:
        return None
    try:
        return (await request.app[appkeys.STORE].get_org(ref)).id
    except NotFound:
        if _ORG_ID.fullmatch(ref):  # a removed org's usage stays readable by its id
            return ref
        raise


# -- paging: a cursor pins the range of the first page ------------------------------------------------


def digest(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _moment(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def encode_cursor(offset: int, since: datetime, until: datetime, digest: str) -> str:
    raw = orjson.dumps({"v": _CURSOR_VERSION, "o": offset, "s": _us(since), "u": _us(until), "h": digest})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str, digest: str) -> tuple[int, datetime, datetime]:
    """(offset, since, until) of a cursor made for the same query parameters.

    Raises:
        InvalidRequest: not a cursor of ours, or one made for other parameters (param `cursor`).
    """
    bad = InvalidRequest("'cursor' is not a cursor this API returned.", param="cursor")
    if len(text) > 512:
        raise bad
    try:
        data = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError) as e:
        raise bad from e
    if not isinstance(data, dict) or data.get("v") != _CURSOR_VERSION:
        raise bad
    offset, since, until = data.get("o"), data.get("s"), data.get("u")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (offset, since, until)) \
            or not 0 < offset <= MAX_OFFSET or not 0 <= since < until < _us(datetime(9999, 1, 1, tzinfo=UTC)):
        raise bad
    if data.get("h") != digest:
        raise InvalidRequest("'cursor' belongs to a query with other parameters: send the same group_by, since, "
                             "until and filters as the first page.", param="cursor")
    return offset, _moment(since), _moment(until)
