"""What every `/analytics/` response carries: the lake's freshness, as a JSON field and as headers.

Freshness is computed at most every ~2 s per process (one listing and a few Parquet footers,
`analytics_lake.freshness.lake_freshness`) and shared by concurrent requests; a slow or broken lake
never holds a response longer than FRESHNESS_WAIT_S (the last known value, or nulls, is sent then).
Errors, auth refusals included, are rendered here so that they carry it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
from aiohttp import web

from analytics_lake.errors import LakeError
from analytics_lake.location import Lake
from gateway import appkeys
from gateway.errors import FleetgateError, PayloadTooLarge

log = logging.getLogger(__name__)

PREFIX = "/analytics/"
FRESHNESS_TTL_S = 2.0
FRESHNESS_WAIT_S = 1.0
NEWEST_HEADER = "X-Fleetgate-Data-Newest"
LAG_HEADER = "X-Fleetgate-Data-Lag-S"
UNKNOWN = "none"  # header value when the lake has no events (or could not be read)


def unknown_freshness(now: datetime | None = None) -> dict[str, Any]:
    return {"newest_event": None, "lag_s": None, "rollup_lag_s": None,
            "checked_at": (now or datetime.now(UTC)).isoformat(timespec="microseconds")}


class FreshnessCache:
    """The lake's freshness, recomputed in a worker thread when older than `ttl_s`, one computation at a time."""

    def __init__(self, lake: Lake, *, ttl_s: float = FRESHNESS_TTL_S, wait_s: float = FRESHNESS_WAIT_S,
                 compute: Callable[[Lake], dict[str, Any]] | None = None) -> None:
        self._lake = lake
        self._ttl_s = ttl_s
        self._wait_s = wait_s
        self._compute = compute
        self._value: dict[str, Any] | None = None
        self._at = float("-inf")
        self._task: asyncio.Task | None = None

    def _read(self) -> dict[str, Any]:
        # Imported here: DuckDB (behind the rollups) loads on the first analytics request, not in every worker.
        from analytics_lake.freshness import lake_freshness

        try:
            return (self._compute or lake_freshness)(self._lake)
        except (LakeError, OSError, pa.ArrowException) as e:
            # Answered with nulls (and readyz says the lake is unreadable); logged, never raised at the caller.
            log.warning("lake freshness could not be read: %s", e)
            return unknown_freshness() | {"error": "the lake could not be read"}

    async def _refresh(self) -> dict[str, Any]:
        value = await asyncio.to_thread(self._read)
        self._value, self._at = value, time.monotonic()
        return value

    async def get(self) -> dict[str, Any]:
        if self._value is not None and time.monotonic() - self._at < self._ttl_s:
            return self._value
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._refresh())
        try:
            return await asyncio.wait_for(asyncio.shield(self._task), self._wait_s)
        except TimeoutError:  # the task goes on and fills the cache for later requests
            return self._value if self._value is not None else unknown_freshness()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


FRESHNESS_CACHE: web.AppKey[FreshnessCache] = web.AppKey("analytics_freshness", FreshnessCache)
FRESHNESS: web.RequestKey[dict] = web.RequestKey("fg_analytics_freshness", dict)


def freshness_headers(freshness: dict[str, Any]) -> dict[str, str]:
    lag = freshness.get("lag_s")
    return {NEWEST_HEADER: freshness.get("newest_event") or UNKNOWN,
            LAG_HEADER: UNKNOWN if lag is None else f"{lag:.3f}"}


def _jsonable(value: Any) -> Any:
    """orjson's fallback for what Arrow rows hold: exact decimals as text, dates and times as ISO strings."""
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def reply(request: web.Request, data: dict[str, Any], status: int = 200,
          headers: dict[str, str] | None = None) -> web.Response:
    """A JSON object with the request's freshness added (the middleware adds the headers)."""
    body = {**data, "freshness": request.get(FRESHNESS) or unknown_freshness()}
    return web.Response(body=orjson.dumps(body, default=_jsonable, option=orjson.OPT_NON_STR_KEYS),
                        status=status, content_type="application/json", headers=headers)


def _http_error(e: web.HTTPException, max_body: int) -> FleetgateError:
    """The router's own answers (404, 405, 413) as our errors, worded as the edge middleware words them."""
    if isinstance(e, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge(f"Request body is too large: the limit is {max_body} bytes (setting max_body_bytes).")
    error = FleetgateError("Unknown path." if e.status == 404 else e.reason)
    error.status, error.type = e.status, "invalid_request_error"
    error.code = {404: "not_found", 405: "method_not_allowed"}.get(e.status, "http_error")
    if isinstance(e, web.HTTPMethodNotAllowed):
        error.headers = {"Allow": ", ".join(sorted(e.allowed_methods))}
    return error


@web.middleware
async def analytics_middleware(request: web.Request, handler):  # noqa: ANN001, ANN201 - aiohttp signature
    """Freshness on every `/analytics/` response, errors included; other paths pass straight through.

    Placed between the edge middleware (request id, access log) and the access middleware, so that
    refusals of the access check carry freshness too."""
    if not request.path.startswith(PREFIX):
        return await handler(request)
    cache = request.app.get(FRESHNESS_CACHE)
    freshness = await cache.get() if cache is not None else unknown_freshness()
    request[FRESHNESS] = freshness
    try:
        response = await handler(request)
    except FleetgateError as e:
        response = reply(request, e.to_dict(), e.status, headers=e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        error = _http_error(e, request.app[appkeys.SETTINGS].max_body_bytes)
        response = reply(request, error.to_dict(), error.status, headers=error.headers)
    if not response.prepared:
        response.headers.update(freshness_headers(freshness))
    return response
