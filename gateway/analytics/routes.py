"""The analytics API's query routes: usage and reliability from the lake (rollups where whole hours allow),
org-scoped like `/admin/v1/usage`, plus its own liveness and readiness; `setup(app)` wires the package.

An API key or an org principal sees only its own org, whatever it asks; a global caller sees every org
and may filter with `?org=`. Usage pages are stable: the first page pins the range (since/until) in an
opaque cursor, so later pages read the same window while new events arrive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
from aiohttp import web

from analytics_lake.errors import LakeError, LakeInputError
from analytics_lake.location import Lake, open_lake
from analytics_lake.report_args import ReportArgumentError
from gateway import appkeys
from gateway.admin.inputs import query_int, query_str
from gateway.analytics import export_routes
from gateway.analytics.envelope import FRESHNESS_CACHE, FreshnessCache, reply
from gateway.analytics.jobs import RUNNER, ExportRunner
from gateway.analytics.params import (
    FILTERS,
    decode_cursor,
    digest,
    encode_cursor,
    filters_of,
    group_by_of,
    known_params,
    org_filter,
    range_of,
)
from gateway.analytics.presign import LINKS, DownloadLinks
from gateway.analytics.queries import QUERY_POOL, QueryPool
from gateway.errors import InvalidRequest, ServiceUnavailable
from gateway.routing.registry import STORE_ERRORS
from gateway.usage import lake_config

USAGE_GROUP_BY = ("org",)
RELIABILITY_GROUP_BY = ("model", "environment", "release")
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
MAX_RELIABILITY_ROWS = 10_000
LAKE: web.AppKey[Lake] = web.AppKey("analytics_lake", Lake)


# -- running queries ---------------------------------------------------------------------------------


async def run_query(request: web.Request, fn: Any) -> pa.Table:
    try:
        return await request.app[QUERY_POOL].run(fn)
    except ReportArgumentError as e:
        raise InvalidRequest(str(e), param=e.argument) from e
    except LakeInputError as e:
        raise InvalidRequest(str(e)) from e
    except (LakeError, OSError, pa.ArrowException) as e:
        raise ServiceUnavailable(f"The usage lake could not answer: {e}", code="lake_unavailable") from e


async def usage(request: web.Request) -> web.Response:
    """Requests, errors, tokens and exact cost grouped by ?group_by= (org, key, model, day, ...), paged."""
    known_params(request, ("group_by", "since", "until", "org", *FILTERS, "limit", "cursor"))
    group_by = group_by_of(request, USAGE_GROUP_BY)
    filters = filters_of(request)
    limit = query_int(request, "limit", DEFAULT_LIMIT, maximum=MAX_LIMIT)
    since, until = range_of(request, datetime.now(UTC))
    org = await org_filter(request)
    key = digest({"group_by": group_by, "since": request.query.get("since"), "until": request.query.get("until"),
                  "org": org, "filters": filters})
    offset = 0
    cursor = query_str(request, "cursor", max_length=512)
    if cursor is not None:
        offset, since, until = decode_cursor(cursor, key)
    table = await run_query(request, lambda q: q.usage(group_by, since=since, until=until, org=org,
                                                       filters=filters or None, limit=limit + 1, offset=offset))
    rows = table.to_pylist()
    more = len(rows) > limit
    return reply(request, {
        "object": "list", "data": rows[:limit], "group_by": list(group_by),
        "since": since.isoformat(), "until": until.isoformat(), "org": org, "limit": limit,
        "next_cursor": encode_cursor(offset + limit, since, until, key) if more else None,
    })


async def reliability(request: web.Request) -> web.Response:
    """Availability, error rates by class and latency/TTFT quantiles, grouped by ?group_by= (model, release, ...)."""
    known_params(request, ("group_by", "since", "until", "org", *FILTERS))
    group_by = group_by_of(request, RELIABILITY_GROUP_BY)
    filters = filters_of(request)
    since, until = range_of(request, datetime.now(UTC))
    org = await org_filter(request)
    table = await run_query(request, lambda q: q.reliability(group_by, since=since, until=until, org=org,
                                                             filters=filters or None))
    if table.num_rows > MAX_RELIABILITY_ROWS:
        raise InvalidRequest(f"{table.num_rows} groups are too many to answer at once (at most "
                             f"{MAX_RELIABILITY_ROWS}): group by fewer dimensions or narrow the range.",
                             param="group_by")
    return reply(request, {"object": "list", "data": table.to_pylist(), "group_by": list(group_by),
                           "since": since.isoformat(), "until": until.isoformat(), "org": org})


# -- status ------------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """The analytics API is alive (no dependency checked)."""
    return reply(request, {"status": "ok"})


def _lake_readable(lake: Lake) -> None:
    """List the lake's top level (usage/, rollups/, exports/): raises when it cannot be read."""
    lake.fs.get_file_info(pafs.FileSelector(lake.base, allow_not_found=True))


async def readyz(request: web.Request) -> web.Response:
    """Ready when the lake can be read and the store answers; 503 otherwise, naming what is down."""
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(request.app[appkeys.STORE].ping(), 1.0)
        checks["store"] = "ok"
    except (*STORE_ERRORS, TimeoutError):
        checks["store"] = "unreachable"
    try:
        await asyncio.wait_for(asyncio.to_thread(_lake_readable, request.app[LAKE]), 2.0)
        checks["lake"] = "ok"
    except (OSError, pa.ArrowException, TimeoutError):
        checks["lake"] = "unreadable"
    down = [name for name, value in checks.items() if value != "ok"]
    return reply(request, {"status": "not_ready" if down else "ready", "checks": checks, "down": down},
                 status=503 if down else 200)


# -- wiring ------------------------------------------------------------------------------------------


async def _resources(app: web.Application) -> AsyncIterator[None]:
    """The lake, query sessions, freshness cache, link signer and export runner of this process
    (after the app's own resources context: the store is open)."""
    settings = app[appkeys.SETTINGS]
    lake = await asyncio.to_thread(open_lake, lake_config(settings))
    app[LAKE] = lake
    app[FRESHNESS_CACHE] = freshness = FreshnessCache(lake)
    app[QUERY_POOL] = pool = QueryPool(lake)
    app[LINKS] = await asyncio.to_thread(DownloadLinks.from_settings, settings, lake)
    runner: ExportRunner | None = None
    if settings.export_runner:
        runner = ExportRunner(app[appkeys.STORE], lake, work_dir=settings.state_dir / "exports-tmp",
                              lease_s=settings.export_lease_s)
        app[RUNNER] = runner
        runner.start()
    try:
        yield
    finally:
        if runner is not None:
            await runner.stop()
        await freshness.close()
        pool.close()


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/analytics/v1/usage", usage)
    r.add_get("/analytics/v1/reliability", reliability)
    r.add_get("/analytics/v1/status/healthz", healthz)
    r.add_get("/analytics/v1/status/readyz", readyz)
    export_routes.setup(app)
    app.cleanup_ctx.append(_resources)
