"""The gateway application factory: `create_app(settings, ...)` wires every component.

Resources open and close in one cleanup context, in dependency order; handlers reach
them through the typed keys in `gateway.appkeys`. There is no module-level app.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import Gauge
from redis.exceptions import RedisError

from analytics_lake.errors import LakeError
from analytics_lake.sink import UsageSink
from gateway import appkeys
from gateway.admin.access import access_middleware
from gateway.analytics.envelope import analytics_middleware
from gateway.auth.admin_auth import AdminAuthenticator
from gateway.auth.authenticator import Authenticator
from gateway.auth.signing import RedisNonces
from gateway.events import EventHub
from gateway.http.middleware import edge_middleware
from gateway.limits import LocalLimiter, RedisLimiter
from gateway.limits.base import BudgetRule, Limiter
from gateway.limits.restore import BudgetRestorer, restore_at_start
from gateway.observability.access_log import AccessLog
from gateway.observability.metrics import LimiterMetrics, Metrics
from gateway.proxy.dataplane import DataPlane
from gateway.redis.bus import ChangeBus, RedisChangeBus
from gateway.redis.client import FastRedis
from gateway.redis.keyspace import RedisKeys
from gateway.routes import add_routes
from gateway.routing.balancer import EndpointState
from gateway.routing.health import HealthProber, ProbeResult
from gateway.routing.registry import STORE_ERRORS, Registry
from gateway.settings import Settings
from gateway.store import open_store
from gateway.store.base import Store
from gateway.usage import budget_restorer, build_sink, lake_writer

log = logging.getLogger(__name__)

LAKE_LAG_INTERVAL_S = 5.0


def build_limiter(settings: Settings, redis: FastRedis | None, metrics: Metrics,
                  restorer: BudgetRestorer | None = None) -> Limiter:
    """RedisLimiter over the lean pipelined client (two calls per request), or LocalLimiter."""
    hooks = LimiterMetrics(metrics)
    local = LocalLimiter(lease_s=settings.reservation_lease_s, prefix=settings.redis_prefix, hooks=hooks,
                         restorer=restorer)
    if redis is None:
        return local
    return RedisLimiter(redis, prefix=settings.redis_prefix, lease_s=settings.reservation_lease_s,
                        timeout_s=settings.redis_timeout_ms / 1000.0, fallback=local,
                        outage_policy=settings.limits_outage_policy, hooks=hooks, restorer=restorer)


StatusChanged = Callable[[EndpointState, str, ProbeResult], None]


def _health_writer(store: Store, on_status_change: StatusChanged | None = None):  # noqa: ANN202 - prober callback
    async def on_result(state: EndpointState, result: ProbeResult) -> None:
        """Write health changes back to the registry (only changes: no write per probe).

        `on_status_change(state, new_status, result)` hears of each recorded status change.
        """
        endpoint = state.endpoint
        new_status = endpoint.status
        if endpoint.status == "ready" and not state.healthy:
            new_status = "unhealthy"
        elif endpoint.status == "unhealthy" and state.healthy:
            new_status = "ready"
        if new_status == endpoint.status and endpoint.last_health == result.summary:
            return
        try:
            await store.record_health(endpoint.id, status=new_status if new_status != endpoint.status else None,
                                      last_health=result.summary, checked_at=result.checked_at)
        except STORE_ERRORS as e:
            log.warning("could not record health of %s (%s)", endpoint.url, type(e).__name__)
            return
        state.endpoint = dataclasses.replace(endpoint, status=new_status, last_health=result.summary,
                                             last_checked_at=result.checked_at)
        if on_status_change is not None and new_status != endpoint.status:
            on_status_change(state, new_status, result)

    return on_result


def _health_events(hub: EventHub, registry: Registry) -> StatusChanged:
    """Publish this replica's prober's endpoint status changes as live `health` events."""

    def on_status_change(state: EndpointState, status: str, result: ProbeResult) -> None:
        endpoint = state.endpoint
        environment = next((route.model.environment for route in registry.routes()
                            if route.model.id == endpoint.model_id), None)
        hub.publish("health", {"endpoint_id": endpoint.id, "url": endpoint.url, "model": state.model_name,
                               "environment": environment, "status": status, "detail": result.summary,
                               "latency_ms": round(result.latency_ms, 1)})

    return on_status_change


async def _report_lake_lag(sink: UsageSink, gauge: Gauge, interval_s: float) -> None:
    """Keep `fleetgate_lake_lag_seconds` current; the lake-freshness alert reads it."""
    while True:
        try:
            gauge.set(await sink.lag_s())
        except (LakeError, RedisError, OSError) as e:  # the gauge keeps its last value; the sink reports the rest
            log.debug("reading the usage sink's lag failed: %s", e)
        await asyncio.sleep(interval_s)


async def _stop_writer(writer, task: asyncio.Task) -> None:  # noqa: ANN001 - LakeWriter
    """Let the in-gateway lake writer write and acknowledge what it holds, then end."""
    writer.stop()
    await task


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _close_events(app: web.Application) -> None:
    """End the live event streams at shutdown, before aiohttp waits for running handlers to finish."""
    app[appkeys.EVENTS].close()


async def _close_access_log(app: web.Application) -> None:
    """Flush the access log's buffer: runs after every request has finished, at cleanup."""
    access_log = app[appkeys.ACCESS_LOG]
    if access_log is not None:
        access_log.close()


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    sink: UsageSink | None = None,
    worker_id: str = "gw0",
    background: bool = True,
) -> web.Application:
    """Build the gateway app.

    Args:
        settings: validated settings.
        store: an unopened store (default: from `settings.database_url`); the app opens and closes it.
        sink: usage sink (default: from `settings.usage_sink`); the app starts and closes it.
        worker_id: names this process's usage spool and metrics.
        background: run health probes and periodic registry refresh.
    """
    # The analytics middleware wraps the access check, so that its refusals carry the lake's freshness too.
    app = web.Application(middlewares=[edge_middleware, analytics_middleware, access_middleware],
                          client_max_size=settings.max_body_bytes)
    app[appkeys.SETTINGS] = settings
    app[appkeys.METRICS] = Metrics()
    app[appkeys.ACCESS_LOG] = AccessLog(fmt=settings.log_format) if settings.access_log else None
    app.on_cleanup.append(_close_access_log)
    app[appkeys.EVENTS] = EventHub()
    app.on_shutdown.append(_close_events)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        # Every resource registers its closer as soon as it is open, so a failure halfway
        # through start-up still closes what was opened (an open SQLite thread would keep
        # the process alive).
        async with contextlib.AsyncExitStack() as stack:
            # Local state (SQLite, spool) is private to this user: a new state dir is created 0700.
            Path(settings.state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            the_store = store or open_store(settings.database_url)
            await the_store.open()
            stack.push_async_callback(the_store.close)
            app[appkeys.STORE] = the_store
            keys = RedisKeys(settings.redis_prefix)
            redis = None
            timeout = settings.redis_timeout_ms / 1000.0
            if settings.redis_url:
                redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=timeout,
                                                socket_connect_timeout=timeout, health_check_interval=10)
                stack.push_async_callback(redis.aclose)
                pubsub_redis = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=timeout)
                stack.push_async_callback(pubsub_redis.aclose)
                bus: ChangeBus = RedisChangeBus(pubsub_redis, keys)
            else:
                bus = ChangeBus()
            app[appkeys.BUS] = bus
            app[appkeys.REDIS] = redis
            metrics = app[appkeys.METRICS]
            registry = Registry(the_store, redis=redis, keys=keys, ttl_s=settings.registry_ttl_s, metrics=metrics)
            app[appkeys.REGISTRY] = registry
            fast = None
            if settings.redis_url:
                fast = FastRedis.from_url(settings.redis_url, timeout_s=timeout, connect_timeout_s=timeout)
                stack.push_async_callback(fast.aclose)
            # Signed requests' nonces go through the lean client too: one round trip on the hot path.
            auth = Authenticator(the_store, redis=redis, keys=keys, redis_ttl_s=settings.registry_ttl_s,
                                 negative_ttl_s=settings.auth_negative_ttl_s,
                                 nonces=RedisNonces(fast.execute, keys) if fast is not None else None)
            app[appkeys.AUTH] = auth
            app[appkeys.ADMIN_AUTH] = AdminAuthenticator(settings, the_store)
            bus.subscribe(registry.on_change)
            bus.subscribe(auth.on_change)
            bus.subscribe(app[appkeys.ADMIN_AUTH].on_change)  # signing-key rotations
            hub = app[appkeys.EVENTS]
            bus.subscribe(hub.on_bus)
            stack.callback(hub.close)  # also when start-up fails halfway (no shutdown signal then)
            usage_sink = sink if sink is not None else build_sink(settings, worker_id)
            if usage_sink is not None:
                await usage_sink.start()
                stack.push_async_callback(usage_sink.close)
            restorer = budget_restorer(settings, usage_sink)
            limiter = build_limiter(settings, fast, metrics, restorer)
            stack.push_async_callback(limiter.close)
            stack.push_async_callback(restorer.close)
            # Before serving: budget spend comes back from the lake (the replayed spool included).
            await restore_at_start(limiter, [BudgetRule.from_budget(b) for b in await the_store.list_budgets()])
            writer = lake_writer(settings, worker_id)
            if writer is not None:
                stack.push_async_callback(_stop_writer, writer, asyncio.create_task(writer.run()))
            dataplane = DataPlane(settings, auth=auth, registry=registry, limiter=limiter, sink=usage_sink,
                                  metrics=metrics, store=the_store)
            app[appkeys.DATAPLANE] = dataplane
            await dataplane.start()
            stack.push_async_callback(dataplane.close)
            await registry.load_all()
            await bus.start()
            stack.push_async_callback(bus.close)
            if background:
                stack.push_async_callback(_cancel, asyncio.create_task(
                    registry.refresh_forever(min(30.0, settings.registry_ttl_s / 2))))
                # Two failed probes in a row, each with at least 1 s, before an endpoint is
                # called unhealthy: one slow answer from a busy pod must not empty the pool.
                prober = HealthProber(dataplane.session, interval_s=settings.health_interval_s,
                                      timeout_s=max(1.0, min(2.0, settings.health_interval_s)),
                                      failure_threshold=2)
                stack.push_async_callback(_cancel, asyncio.create_task(
                    prober.run(registry.all_states, _health_writer(the_store, _health_events(hub, registry)))))
                if usage_sink is not None:
                    stack.push_async_callback(_cancel, asyncio.create_task(
                        _report_lake_lag(usage_sink, metrics.lake_lag, LAKE_LAG_INTERVAL_S)))
            yield

    app.cleanup_ctx.append(resources)
    add_routes(app)
    return app
