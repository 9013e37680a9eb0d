"""Liveness, readiness and Prometheus metrics: what orchestrators and scrapers call."""

from __future__ import annotations

import asyncio

from aiohttp import web
from redis.exceptions import RedisError

from gateway import appkeys
from gateway.auth.secrets import tokens_equal
from gateway.errors import AuthenticationFailed
from gateway.observability.metrics import CONTENT_TYPE
from gateway.routing.registry import STORE_ERRORS


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the registry is loaded; `degraded` lists what is down but survivable."""
    app = request.app
    registry = app[appkeys.REGISTRY]
    dataplane = app[appkeys.DATAPLANE]
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(app[appkeys.STORE].ping(), 1.0)
        checks["store"] = "ok"
    except (*STORE_ERRORS, asyncio.TimeoutError):
        checks["store"] = "unreachable"
    redis_down = False
    redis = app[appkeys.REDIS]
    if redis is not None:
        try:
            await asyncio.wait_for(redis.ping(), 1.0)
        except (RedisError, OSError, asyncio.TimeoutError):
            redis_down = True
        redis_down = redis_down or app[appkeys.BUS].degraded
        checks["redis"] = "unreachable" if redis_down else "ok"
        checks["limits"] = "local-fallback" if dataplane.limiter.degraded else "global"
    checks["registry"] = "loaded" if registry.loaded_at is not None else "not loaded"
    metrics = app[appkeys.METRICS]
    metrics.redis_degraded.set(1 if redis_down else 0)
    metrics.store_degraded.set(1 if checks["store"] != "ok" else 0)
    degraded = [name for name, value in checks.items() if value == "unreachable"]
    ready = registry.loaded_at is not None
    body = {"status": ("degraded" if degraded else "ready") if ready else "not_ready",
            "checks": checks, "degraded": degraded,
            "models": len(registry.routes())}
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text, rendered off the event loop; needs the bearer token when `metrics_token` is set."""
    token = request.app[appkeys.SETTINGS].metrics_token
    if token:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not tokens_equal(presented.strip(), token):
            raise AuthenticationFailed("Invalid or missing metrics token.", code="invalid_metrics_token",
                                       headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    body = await request.app[appkeys.METRICS].render_async()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
