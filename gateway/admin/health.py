"""Admin API: an endpoint's recent health transitions and this worker's current prober view.

The prober keeps no history, so this module keeps one: a bounded ring per endpoint, fed by the live
`health` events of this process's hub (probe verdicts, with the reason) and by a light sampler of the
router's endpoint states (passive ejections and re-admissions, operator status changes, first sight).
Each gateway worker has its own prober, router and ring: with several workers the answer is the
view of the worker that served the request (`worker` in the answer names its process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway import appkeys
from gateway.admin.common import reply
from gateway.admin.inputs import path, query_int
from gateway.events import EventHub
from gateway.routing.balancer import EndpointState
from gateway.routing.registry import Registry

log = logging.getLogger(__name__)

HISTORY_PER_ENDPOINT = 50
MAX_ENDPOINTS = 4096  # endpoints remembered; the least recently changed is forgotten first
MAX_SAMPLE_INTERVAL_S = 1.0

# (status, healthy, ejected): what one sample compares to the previous one.
View = tuple[str, bool, bool]


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of an endpoint's health as this worker saw it.

    `source`: `probe` (the active prober's verdict changed the registry status), `passive` (live
    traffic ejected or re-admitted it), `registry` (its status changed in the registry, e.g. an
    operator disabled it), `observed` (first sight of the endpoint by this worker).
    """

    at: datetime
    source: str
    status: str
    healthy: bool
    ejected: bool
    detail: str | None = None
    latency_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "source": self.source, "status": self.status, "healthy": self.healthy,
                "ejected": self.ejected, "detail": self.detail, "latency_ms": self.latency_ms}


class HealthHistory:
    """Bounded rings of transitions per endpoint id (at most `per_endpoint` each, `max_endpoints` ids)."""

    def __init__(self, *, per_endpoint: int = HISTORY_PER_ENDPOINT, max_endpoints: int = MAX_ENDPOINTS) -> None:
        self.per_endpoint = per_endpoint
        self.max_endpoints = max_endpoints
        self._rings: OrderedDict[str, deque[Transition]] = OrderedDict()
        self._last: dict[str, View] = {}

    def record(self, endpoint_id: str, transition: Transition) -> None:
        ring = self._rings.get(endpoint_id)
        if ring is None:
            ring = self._rings[endpoint_id] = deque(maxlen=self.per_endpoint)
            while len(self._rings) > self.max_endpoints:
                forgotten, _ = self._rings.popitem(last=False)
                self._last.pop(forgotten, None)
        else:
            self._rings.move_to_end(endpoint_id)
        ring.append(transition)
        self._last[endpoint_id] = (transition.status, transition.healthy, transition.ejected)

    def history(self, endpoint_id: str, limit: int | None = None) -> list[Transition]:
        """Newest first."""
        ring = self._rings.get(endpoint_id, ())
        newest_first = list(reversed(ring))
        return newest_first[:limit] if limit is not None else newest_first

    def sample(self, states: Iterable[EndpointState], now: datetime) -> int:
        """Record each endpoint whose (status, healthy, ejected) differs from what was last recorded."""
        changed = 0
        for state in states:
            view = _view(state)
            last = self._last.get(state.id)
            if last == view:
                continue
            self.record(state.id, Transition(now, _source(last, view), view[0], view[1], view[2],
                                             state.endpoint.last_health))
            changed += 1
        return changed

    def on_health_event(self, data: dict[str, Any], state: EndpointState | None, now: datetime) -> None:
        """A `health` event of this worker's prober (published right after it updated the state)."""
        endpoint_id = data.get("endpoint_id")
        if not isinstance(endpoint_id, str):
            return
        status = str(data.get("status") or (state.endpoint.status if state else "unknown"))
        healthy = state.healthy if state is not None else status != "unhealthy"
        ejected = state.ejected if state is not None else False
        latency = data.get("latency_ms")
        self.record(endpoint_id, Transition(now, "probe", status, healthy, ejected,
                                            _short(data.get("detail")),
                                            float(latency) if isinstance(latency, (int, float)) else None))


def _view(state: EndpointState) -> View:
    return (state.endpoint.status, state.healthy, state.ejected)


def _source(last: View | None, view: View) -> str:
    if last is None:
        return "observed"
    if last[2] != view[2]:
        return "passive"
    if last[1] != view[1] or {last[0], view[0]} == {"ready", "unhealthy"}:
        return "probe"
    return "registry"


def _short(value: Any) -> str | None:
    return str(value)[:200] if value is not None else None


def _state(registry: Registry, endpoint_id: str) -> EndpointState | None:
    return next((s for s in registry.all_states() if s.id == endpoint_id), None)


HISTORY: web.AppKey[HealthHistory] = web.AppKey("health_history", HealthHistory)


async def _follow_events(hub: EventHub, registry: Registry, history: HealthHistory) -> None:
    """Record every `health` event of this process's hub until the hub closes."""
    with hub.subscribe(("health",)) as subscription:
        async for event in subscription:
            if event.type == "health":
                endpoint_id = event.data.get("endpoint_id")
                state = _state(registry, endpoint_id) if isinstance(endpoint_id, str) else None
                history.on_health_event(event.data, state, datetime.now(UTC))


async def _sample_forever(registry: Registry, history: HealthHistory, interval_s: float) -> None:
    while True:
        history.sample(registry.all_states(), datetime.now(UTC))
        await asyncio.sleep(interval_s)


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _history_ctx(app: web.Application) -> AsyncIterator[None]:
    """Runs after the app's resources are open (its cleanup before they close)."""
    history = app[HISTORY]
    registry, hub = app[appkeys.REGISTRY], app[appkeys.EVENTS]
    interval = min(MAX_SAMPLE_INTERVAL_S, app[appkeys.SETTINGS].health_interval_s)
    tasks = [asyncio.create_task(_follow_events(hub, registry, history)),
             asyncio.create_task(_sample_forever(registry, history, interval))]
    try:
        yield
    finally:
        for task in tasks:
            await _cancel(task)


def _current(state: EndpointState | None) -> dict[str, Any]:
    """This worker's live view of the endpoint (`routed` false: its router does not hold it)."""
    if state is None:
        return {"routed": False, "healthy": None, "ejected": None, "in_flight": 0, "probe_failures": None,
                "consecutive_failures": None, "waiting": None, "running": None, "kv_usage": None,
                "served_model": None}
    return {"routed": True, "healthy": state.healthy, "ejected": state.ejected, "in_flight": state.in_flight,
            "probe_failures": state.probe_failures, "consecutive_failures": state.consecutive_failures,
            "waiting": state.waiting, "running": state.running, "kv_usage": state.kv_usage,
            "served_model": state.served_model}


async def endpoint_health(request: web.Request) -> web.Response:
    """`GET /admin/v1/endpoints/{id}/health[?limit=N]`: recent transitions (newest first) and the current view."""
    endpoint_id = path(request, "endpoint_id")
    limit = query_int(request, "limit", HISTORY_PER_ENDPOINT, minimum=1, maximum=HISTORY_PER_ENDPOINT)
    app = request.app
    store = app[appkeys.STORE]
    endpoint = await store.get_endpoint(endpoint_id)  # NotFound → 404
    model = await store.get_model_by_id(endpoint.model_id)
    state = _state(app[appkeys.REGISTRY], endpoint.id)
    return reply({
        "endpoint_id": endpoint.id, "url": endpoint.url, "model": model.name, "environment": model.environment,
        "release": endpoint.release, "status": endpoint.status, "weight": endpoint.weight,
        "last_health": endpoint.last_health,
        "last_checked_at": endpoint.last_checked_at.isoformat() if endpoint.last_checked_at else None,
        "worker": os.getpid(), "current": _current(state), "history_limit": HISTORY_PER_ENDPOINT,
        "history": [t.to_dict() for t in app[HISTORY].history(endpoint.id, limit)],
    })


def setup(app: web.Application) -> None:
    app[HISTORY] = HealthHistory()
    app.cleanup_ctx.append(_history_ctx)
    app.router.add_get("/admin/v1/endpoints/{endpoint_id}/health", endpoint_health)
