"""Typed application keys: every shared resource of a gateway app, declared in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway.auth.admin_auth import AdminAuthenticator
    from gateway.auth.authenticator import Authenticator
    from gateway.auth.principal import Principal
    from gateway.events import EventHub
    from gateway.observability.access_log import AccessLog
    from gateway.observability.metrics import Metrics
    from gateway.proxy.dataplane import DataPlane
    from gateway.redis.bus import ChangeBus
    from gateway.routing.registry import Registry
    from gateway.settings import Settings
    from gateway.store.base import Store

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
STORE: web.AppKey[Store] = web.AppKey("store")
REGISTRY: web.AppKey[Registry] = web.AppKey("registry")
AUTH: web.AppKey[Authenticator] = web.AppKey("auth")
ADMIN_AUTH: web.AppKey[AdminAuthenticator] = web.AppKey("admin_auth")  # admin bearer tokens → Principal
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
BUS: web.AppKey[ChangeBus] = web.AppKey("bus")
DATAPLANE: web.AppKey[DataPlane] = web.AppKey("dataplane")
REDIS: web.AppKey[object] = web.AppKey("redis")  # redis.asyncio.Redis, or None without Redis
EVENTS: web.AppKey[EventHub] = web.AppKey("events")  # live events for /admin/v1/events (SSE)
ACCESS_LOG: web.AppKey[AccessLog | None] = web.AppKey("access_log")  # None when settings.access_log is off

REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
# The data plane's part of the access line: org_id, key_id, model, endpoint, upstream_ms, error_code
# (see gateway.observability.access_log.DATAPLANE_FIELDS); the edge middleware merges it.
ACCESS: web.RequestKey[dict] = web.RequestKey("fg_access", dict)
# The admin API caller, set by gateway.admin.access.access_middleware before the handler runs.
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("fg_principal", object)
