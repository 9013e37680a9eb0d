"""Shadow traffic: a copy of an exact share of a model's live requests, sent to the endpoints that mirror it.

A copy leaves in the background as soon as the live request is forwarded; its reply is read in full
and thrown away. Only the release metrics (traffic="shadow") learn how it went: no client, bill,
reservation, usage row or passive-health counter ever sees a shadow request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import orjson

from gateway.observability.metrics import Metrics, outcome_of
from gateway.proxy.requests import InferenceRequest
from gateway.proxy.streaming import GarbageStream, SseRelay
from gateway.routing.balancer import EndpointState
from gateway.routing.registry import Route
from gateway.store.models import Model
from gateway.upstream import (
    UpstreamConnectError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamSaturated,
    UpstreamTimeoutError,
)

log = logging.getLogger(__name__)

FULL = 100.0  # mirror_percent of an endpoint that gets a copy of every request
_FAILURES = (UpstreamConnectError, UpstreamProtocolError, UpstreamTimeoutError, GarbageStream, TimeoutError)


class Shadows:
    """Mirrors requests to the endpoints of their model whose `mirror_percent` is above 0.

    The share is exact, not drawn at random: each endpoint keeps a credit that grows by its
    mirror_percent per live request and pays 100 for a copy, so over any run of requests the
    copies sent are within one of share × requests (also per worker process).

    Args:
        pool: the data plane's upstream pool (the copy goes where live traffic would).
        metrics: where outcomes go.
        max_in_flight: copies in flight at most; a copy due beyond it is skipped (and counted).
        deadline: model → seconds a copy of `req` may take at most (the live non-streamed deadline).
    """

    def __init__(self, pool: UpstreamPool, metrics: Metrics, *, max_in_flight: int,
                 deadline: Callable[[Model, InferenceRequest], float]) -> None:
        self.pool = pool
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self._deadline = deadline
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def mirror(self, route: Route, req: InferenceRequest, path: str, request_id: str) -> None:
        """Send the copies of this live request that are due (call once per request, when it is forwarded)."""
        for state in route.states:
            share = state.mirror
            if share <= 0.0:
                continue
            credit = state.mirror_credit + share
            if credit >= FULL:
                credit -= FULL
                self._send(route, state, req, path, request_id)
            state.mirror_credit = credit

    def _send(self, route: Route, state: EndpointState, req: InferenceRequest, path: str, request_id: str) -> None:
        model = route.model
        if len(self._tasks) >= self.max_in_flight:
            self.metrics.child(self.metrics.shadow_skipped, model.name, model.environment, state.release).inc()
            return
        payload = req.payload(state.served_model or model.name)
        task = asyncio.get_running_loop().create_task(
            self._copy(route, state, path, payload, request_id + "-shadow", req.stream, self._deadline(model, req)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _copy(self, route: Route, state: EndpointState, path: str, payload: bytes, request_id: str,
                    stream: bool, deadline_s: float) -> None:
        model = route.model
        series = self.metrics.release_series(model.name, model.environment, state.release, "shadow")
        started = time.perf_counter()
        ttft: float | None = None
        try:
            async with asyncio.timeout(deadline_s):
                resp = await self.pool.request(state.endpoint.url, path, payload, (("X-Request-ID", request_id),))
                try:
                    if resp.status != 200:
                        await resp.read()
                        outcome = outcome_of(resp.status)
                    elif stream:
                        ttft, outcome = await _drain_stream(resp, started)
                    else:
                        outcome = "ok" if isinstance(_json(await resp.read()), dict) else "error"
                finally:
                    resp.release()
        except UpstreamSaturated:  # our own connection cap: nothing was sent
            self.metrics.child(self.metrics.shadow_skipped, model.name, model.environment, state.release).inc()
            return
        except _FAILURES as e:
            log.debug("shadow request %s to endpoint %s failed: %s", request_id, state.endpoint.id, type(e).__name__)
            outcome = "error"
        except Exception:  # noqa: BLE001 - a bug here must show, and never touch live traffic
            log.exception("shadow request %s to endpoint %s failed inside the gateway", request_id, state.endpoint.id)
            outcome = "error"
        series.record(outcome, time.perf_counter() - started, ttft)

    async def close(self) -> None:
        """Cancel the copies still in flight (gateway shutdown): nothing waits for a shadow."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def _drain_stream(resp: UpstreamResponse, started: float) -> tuple[float | None, str]:
    """Read an event stream to its end; (seconds to the first event, outcome). A stream that is not
    SSE, or ends without [DONE], is the pod's error, as it would be for a client."""
    if not resp.headers.get("Content-Type", "").startswith("text/event-stream"):
        await resp.read()
        return None, "error"
    relay = SseRelay(client_wants_usage=False)
    ttft = None
    async for chunk in resp.iter_chunks():
        if relay.feed(chunk) and ttft is None:
            ttft = time.perf_counter() - started
    if relay.flush() and ttft is None:
        ttft = time.perf_counter() - started
    return ttft, "ok" if relay.done else "error"


def _json(data: bytes) -> object:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
