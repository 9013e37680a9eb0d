"""Admin API: canned usage reports from the lake (`/admin/v1/usage/{spend,latency,errors}`).

A global principal sees every org (optionally filtered with `org`); an org user or an API key
sees only its own org's rows, whatever it asks for, and never pod URLs (`by=endpoint` is global-only).
DuckDB runs in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from aiohttp import web

from analytics_lake.errors import LakeError, LakeInputError
from analytics_lake.report_args import ReportArgumentError, by_names, check_range, parse_since, parse_until
from gateway import appkeys
from gateway.admin import access
from gateway.admin.common import reply
from gateway.admin.inputs import query_str
from gateway.errors import FleetgateError, InvalidRequest, NotFound, PermissionDenied
from gateway.usage import lake_config

REPORTS = ("spend", "latency", "errors")
# Dimensions that reveal the fleet (pod URLs) rather than the caller's own usage.
ADMIN_ONLY_DIMENSIONS = frozenset({"endpoint"})


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _run_report(settings, kind: str, by: list[str], since: datetime | None, until: datetime | None,
                org: str | None) -> list[dict[str, Any]]:
    from analytics_lake.query import LakeQuery

    with LakeQuery(lake_config(settings), org=org) as lake:
        table = getattr(lake, kind)(by=by, since=since, until=until, org=org)
    return [{k: _jsonable(v) for k, v in row.items()} for row in table.to_pylist()]


async def report(request: web.Request) -> web.Response:
    """A usage report: spend, latency or errors, grouped with ?by=, from ?since= to ?until= (exclusive), for ?org=."""
    kind = request.match_info["kind"]
    if kind not in REPORTS:
        raise NotFound(f"unknown report {kind!r}: expected one of {', '.join(REPORTS)}")
    scoped_org = access.org_scope(request)  # an API key or org user sees only its org
    default_by = {"spend": "org", "latency": "model", "errors": "model"}[kind]
    org = query_str(request, "org")
    try:
        by = by_names(query_str(request, "by", default_by, max_length=256))
        since_text = query_str(request, "since", max_length=64)
        since = parse_since(since_text) if since_text else None
        until_text = query_str(request, "until", max_length=64)
        until = parse_until(until_text) if until_text else None
        check_range(since, until)
    except ReportArgumentError as e:
        raise InvalidRequest(str(e), param=e.argument) from e
    if scoped_org is not None:
        hidden = ADMIN_ONLY_DIMENSIONS.intersection(by)
        if hidden:
            raise PermissionDenied(f"Grouping by {', '.join(sorted(hidden))} needs a global principal.",
                                   code="admin_only", param="by")
        org = scoped_org  # whatever it asks for
    elif org:
        org = (await request.app[appkeys.STORE].get_org(org)).id
    try:
        rows = await asyncio.to_thread(_run_report, request.app[appkeys.SETTINGS], kind, by, since, until, org)
    except ReportArgumentError as e:
        raise InvalidRequest(str(e), param=e.argument) from e
    except LakeInputError as e:
        raise InvalidRequest(str(e)) from e
    except LakeError as e:
        raise FleetgateError(f"the usage lake could not answer: {e}") from e
    return reply(rows)


async def flush(request: web.Request) -> web.Response:
    """Write this process's spooled usage events to the lake now."""
    sink = request.app[appkeys.DATAPLANE].sink
    if sink is None:
        return reply({"flushed": False, "reason": "usage_sink is none"})
    await sink.flush()
    return reply({"flushed": True})


def setup(app: web.Application) -> None:
    app.router.add_post("/admin/v1/usage/flush", flush)
    app.router.add_get("/admin/v1/usage/{kind}", report)
