"""The request path: authenticate, limit, route, forward (with failover), settle, record usage.

One `DataPlane` per process holds everything the hot path touches; handlers are thin.
Nothing here queries the store per request: keys and the registry come from snapshots.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from analytics_lake.sink import UsageSink
from gateway.appkeys import REQUEST_ID
from gateway.auth.authenticator import Authenticator, KeyInfo
from gateway.errors import (
    FleetgateError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
    json_object,
)
from gateway.limits.base import BudgetRule, Limiter, LimitPolicy, Reservation
from gateway.limits.pricing import cost_micros, estimate_prompt_tokens
from gateway.observability.metrics import Metrics
from gateway.proxy.streaming import SseRelay
from gateway.routing.balancer import Balancer, EndpointState, acquire
from gateway.routing.health import PassiveHealth
from gateway.routing.registry import Registry, Route
from gateway.settings import Settings
from gateway.store.base import Store
from gateway.upstream import (
    UpstreamConnectError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeoutError,
)

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({502, 503, 504})
JSON = "application/json"
CLIENT_CLOSED = 499  # nginx's convention for "client closed the request"


class _RetryableUpstream(Exception):
    def __init__(self, error: FleetgateError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(slots=True)
class Call:
    """Per-request bookkeeping, turned into the usage event at the end."""

    request_id: str
    ts_us: int
    t0: float
    info: KeyInfo | None = None
    model: str | None = None
    served: Route | None = None
    state: EndpointState | None = None
    stream: bool = False
    status: int = 0
    error_type: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: int = 0
    ttft_ms: float | None = None
    upstream_ms: float = 0.0
    t_upstream: float = 0.0  # perf_counter when the upstream request was sent
    reservation: Reservation | None = None
    user: str | None = None
    max_tokens: int = 0
    done: bool = False
    extra_headers: dict[str, str] = field(default_factory=dict)


class DataPlane:
    def __init__(
        self,
        settings: Settings,
        *,
        auth: Authenticator,
        registry: Registry,
        limiter: Limiter,
        sink: UsageSink | None,
        metrics: Metrics,
        balancer: Balancer | None = None,
        health: PassiveHealth | None = None,
        store: Store | None = None,
    ) -> None:
        self.store = store
        self._soft_flagged: set[tuple[str, str, str]] = set()
        self.settings = settings
        self.auth = auth
        self.registry = registry
        self.limiter = limiter
        self.sink = sink
        self.metrics = metrics
        self.balancer = balancer or Balancer()
        self.health = health or PassiveHealth(
            failure_threshold=settings.eject_after_failures, cooldown_s=settings.eject_cooldown_s
        )
        self.upstream: UpstreamPool | None = None
        self.session: aiohttp.ClientSession | None = None  # health probes only (GET, off the hot path)
        self._background: set[asyncio.Task] = set()
        self._policies: dict[str, tuple[KeyInfo, LimitPolicy]] = {}

    # --- lifecycle --------------------------------------------------------
    async def start(self) -> None:
        self.session = aiohttp.ClientSession(skip_auto_headers=("User-Agent",))
        self.upstream = UpstreamPool(connect_timeout_s=self.settings.upstream_connect_timeout_s,
                                     read_timeout_s=self.settings.upstream_timeout_s)

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self.upstream is not None:
            await self.upstream.close()
        if self.session is not None:
            await self.session.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- helpers ----------------------------------------------------------
    def policy_for(self, info: KeyInfo) -> LimitPolicy:
        cached = self._policies.get(info.key.id)
        if cached is not None and cached[0] is info:
            return cached[1]
        rules = tuple(BudgetRule.from_budget(b) for b in info.budgets)
        policy = LimitPolicy(org_id=info.org.id, key_id=info.key.id, key_rpm=info.key.rpm_limit,
                             key_tpm=info.key.tpm_limit, org_rpm=info.org.rpm_limit, org_tpm=info.org.tpm_limit,
                             budgets=rules)
        self._policies[info.key.id] = (info, policy)
        return policy

    @staticmethod
    def parse_body(raw: bytes, kind: str) -> dict:
        body = json_object(raw)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("'model' is required and must be a string.", param="model")
        required = {"chat": "messages", "completions": "prompt", "embeddings": "input"}[kind]
        value = body.get(required)
        if value is None:
            raise InvalidRequest(f"'{required}' is required.", param=required)
        if kind == "chat" and (not isinstance(value, list) or not value
                               or not all(isinstance(m, dict) for m in value)):
            raise InvalidRequest("'messages' must be a non-empty array of message objects.", param="messages")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise InvalidRequest("'stream' must be a boolean.", param="stream")
        for name in ("max_tokens", "max_completion_tokens"):
            v = body.get(name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise InvalidRequest(f"'{name}' must be a positive integer.", param=name)
        return body

    def resolve(self, info: KeyInfo, model: str) -> Route:
        env = info.key.environment or self.settings.default_environment
        if not info.may_use(model):
            raise PermissionDenied(f"This API key may not use model '{model}'.", param="model")
        route = self.registry.get(model, env)
        if route is None or route.model.status != "active":
            raise NotFound(f"The model '{model}' does not exist or is not available in '{env}'.",
                           code="model_not_found", param="model")
        return route

    def _chain(self, route: Route, env: str) -> list[Route]:
        chain = [route]
        for name in route.model.fallbacks:
            fb = self.registry.get(name, env)
            if fb is not None and fb.model.status == "active" and fb not in chain:
                chain.append(fb)
        return chain

    def _soft_limit(self, info: KeyInfo, reservation: Reservation) -> None:
        """Count every request over a soft limit; audit the first one per budget and period."""
        self.metrics.child(self.metrics.soft_limit, info.org.id).inc()
        if self.store is None:
            return
        now = time.gmtime()
        for rule in reservation.soft_limit_rules:
            period = {"daily": time.strftime("%Y-%m-%d", now), "monthly": time.strftime("%Y-%m", now)}.get(
                rule.period, "total")
            marker = (rule.scope, rule.scope_id, period)
            if marker in self._soft_flagged:
                continue
            self._soft_flagged.add(marker)
            self._spawn(self.store.add_audit("gateway", "budget.soft_limit", rule.scope_id, {
                "org_id": rule.org_id, "scope": rule.scope, "period": rule.period, "period_key": period,
                "limit_micros": rule.limit_micros, "soft_limit_pct": rule.soft_limit_pct}))

    # --- the request path -------------------------------------------------
    async def handle(self, request: web.Request, kind: str, upstream_path: str) -> web.StreamResponse:
        call = Call(request_id=request.get(REQUEST_ID) or uuid.uuid4().hex,
                    ts_us=time.time_ns() // 1000, t0=time.perf_counter())
        try:
            call.info = await self.auth.authenticate(request.headers.get("Authorization"))
            body = self.parse_body(await request.read(), kind)
            call.model = body["model"]
            user = body.get("user")
            call.user = user if isinstance(user, str) else None
            route = self.resolve(call.info, call.model)
            call.stream = kind != "embeddings" and body.get("stream") is True
            max_tokens = 0 if kind == "embeddings" else (
                body.get("max_tokens") or body.get("max_completion_tokens") or route.model.max_tokens)
            call.max_tokens = max_tokens
            call.prompt_tokens = estimate_prompt_tokens(body)
            policy = self.policy_for(call.info)
            if policy.budgets or policy.key_rpm or policy.key_tpm or policy.org_rpm or policy.org_tpm:
                # Reserve for the most expensive model the request may end up on (fallbacks).
                reserve = cost_micros(call.prompt_tokens, max_tokens, route.model.input_price,
                                      route.model.output_price)
                for fallback in self._chain(route, route.model.environment)[1:]:
                    reserve = max(reserve, cost_micros(call.prompt_tokens, max_tokens, fallback.model.input_price,
                                                       fallback.model.output_price))
                call.reservation = await self.limiter.reserve(
                    policy, cost_micros=reserve, tokens=call.prompt_tokens + max_tokens)
                call.extra_headers = call.reservation.headers
                if call.reservation.soft_limit_hit:
                    self._soft_limit(call.info, call.reservation)
            return await self._forward(request, call, route, body, upstream_path, kind)
        except FleetgateError as e:
            call.status = e.status
            call.error_type = e.code or e.type
            if e.status == 429:
                self.metrics.child(self.metrics.limited, e.code or "limited").inc()
            await self._finish(call)
            raise
        except asyncio.CancelledError:
            call.status = CLIENT_CLOSED
            call.error_type = "client_disconnected"
            await self._finish(call)
            raise

    async def _forward(self, request: web.Request, call: Call, route: Route, body: dict,
                       path: str, kind: str) -> web.StreamResponse:
        assert call.info is not None
        env = route.model.environment
        affinity = request.headers.get("X-Session-ID") or (body.get("user") if isinstance(body.get("user"), str)
                                                           else None)
        wants_usage = call.stream and bool((body.get("stream_options") or {}).get("include_usage"))
        payload_cache: dict[str, bytes] = {}
        tried: set[str] = set()
        last_error: FleetgateError | None = None
        attempts = 0
        for candidate in self._chain(route, env):  # cheap: usually one model
            while attempts < self.settings.max_attempts:
                state = self.balancer.pick(candidate.states, affinity_key=affinity, exclude=tried)
                if state is None:
                    break
                attempts += 1
                tried.add(state.endpoint.id)
                if attempts > 1:
                    self.metrics.child(self.metrics.retries, route.model.name).inc()
                payload = payload_cache.get(candidate.model.name)
                if payload is None:
                    payload = payload_cache[candidate.model.name] = self._payload(body, candidate, call.stream, kind,
                                                                                  call.max_tokens)
                call.served, call.state = candidate, state
                try:
                    if call.stream:
                        return await self._stream(request, call, state, path, payload, wants_usage)
                    return await self._unary(call, state, path, payload)
                except _RetryableUpstream as e:
                    last_error = e.error
                    continue
        raise last_error or ServiceUnavailable(f"No healthy endpoint for model '{route.model.name}' in '{env}'.")

    @staticmethod
    def _payload(body: dict, route: Route, stream: bool, kind: str, max_tokens: int) -> bytes:
        """The upstream body: the served model's name, usage on streams, and a max_tokens cap.

        Without a cap from the client, the reserved `max_tokens` (the requested model's default)
        is sent upstream: the budget reservation assumed it, so the pod must not generate more.
        """
        out = dict(body)
        out["model"] = route.model.name
        if kind != "embeddings" and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            out["max_tokens"] = max_tokens
        if stream:
            out["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return orjson.dumps(out)

    def _fail(self, state: EndpointState) -> None:
        if self.health.record_failure(state, time.monotonic()):
            self.metrics.child(self.metrics.ejections, state.endpoint.url).inc()

    async def _send(self, state: EndpointState, path: str, payload: bytes, request_id: str) -> UpstreamResponse:
        assert self.upstream is not None
        try:
            return await self.upstream.request(state.endpoint.url, path, payload, (("X-Request-ID", request_id),))
        except UpstreamTimeoutError as e:
            self._fail(state)
            raise _RetryableUpstream(UpstreamTimeout("The model endpoint timed out.")) from e
        except (UpstreamConnectError, UpstreamProtocolError) as e:
            self._fail(state)
            raise _RetryableUpstream(UpstreamError(
                f"Could not reach the model endpoint ({type(e).__name__}).")) from e

    async def _read(self, state: EndpointState, resp: UpstreamResponse) -> bytes:
        """A whole upstream body; a broken or silent pod is retryable (nothing reached the client)."""
        try:
            return await resp.read()
        except UpstreamTimeoutError as e:
            self._fail(state)
            raise _RetryableUpstream(UpstreamTimeout("The model endpoint timed out.")) from e
        except UpstreamProtocolError as e:
            self._fail(state)
            raise _RetryableUpstream(UpstreamError("The model endpoint dropped the connection.")) from e

    async def _upstream_error(self, state: EndpointState, resp: UpstreamResponse, data: bytes) -> None:
        """Raise for a non-2xx upstream answer: retryable for 502/503/504, else passed on."""
        if resp.status >= 500:
            self._fail(state)
        message = f"Upstream returned {resp.status}."
        try:
            detail = orjson.loads(data)
            if isinstance(detail, dict) and isinstance(detail.get("error"), dict):
                message = str(detail["error"].get("message") or message)
            elif isinstance(detail, dict) and "message" in detail:
                message = str(detail["message"])
        except orjson.JSONDecodeError:
            pass
        if resp.status in RETRYABLE_STATUSES:
            raise _RetryableUpstream(ServiceUnavailable(message) if resp.status == 503 else UpstreamError(message))
        if resp.status >= 500:
            raise UpstreamError(message)
        error = FleetgateError(message)
        error.status = resp.status
        error.type = "invalid_request_error"
        error.code = "upstream_rejected"
        raise error

    async def _unary(self, call: Call, state: EndpointState, path: str, payload: bytes) -> web.Response:
        lease = acquire(state)
        t_up = time.perf_counter()
        try:
            resp = await self._send(state, path, payload, call.request_id)
            try:
                data = await self._read(state, resp)
            finally:
                resp.release()
        finally:
            lease.release()
            call.upstream_ms = (time.perf_counter() - t_up) * 1000.0
        if resp.status != 200:
            await self._upstream_error(state, resp, data)
        self.health.record_success(state, time.monotonic())
        try:
            usage = orjson.loads(data).get("usage") or {}
        except (orjson.JSONDecodeError, AttributeError):
            usage = {}
        self._take_usage(call, usage)
        call.status = 200
        await self._finish(call)
        headers = {"X-Request-ID": call.request_id, **call.extra_headers}
        return web.Response(body=data, status=200, content_type=JSON, headers=headers)

    async def _stream(self, request: web.Request, call: Call, state: EndpointState, path: str, payload: bytes,
                      wants_usage: bool) -> web.StreamResponse:
        lease = acquire(state)
        t_up = call.t_upstream = time.perf_counter()
        resp: UpstreamResponse | None = None
        relay = SseRelay(client_wants_usage=wants_usage)
        out: web.StreamResponse | None = None
        try:
            resp = await self._send(state, path, payload, call.request_id)
            if resp.status != 200:
                await self._upstream_error(state, resp, await self._read(state, resp))
            out = web.StreamResponse(status=200, headers={
                "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                "X-Request-ID": call.request_id, **call.extra_headers})
            out.enable_chunked_encoding()
            await out.prepare(request)
            try:
                async for chunk in resp.iter_chunks():
                    data = relay.feed(chunk)
                    if data:
                        if call.ttft_ms is None:
                            call.ttft_ms = (time.perf_counter() - call.t0) * 1000.0
                        await out.write(data)
                rest = relay.flush()
                if rest:
                    await out.write(rest)
            except (UpstreamProtocolError, UpstreamTimeoutError):
                # Upstream broke mid-stream: too late to retry; end the stream with an error event.
                self._fail(state)
                call.status, call.error_type = 502, "upstream_stream_broken"
                self._take_usage(call, relay.usage, relay.content_events)
                await self._finish(call)
                err = UpstreamError("The model endpoint broke off the stream.").to_dict()
                await out.write(b"data: " + orjson.dumps(err) + b"\n\n")
                await out.write_eof()
                return out
            self.health.record_success(state, time.monotonic())
            call.status = 200
            self._take_usage(call, relay.usage, relay.content_events)
            await self._finish(call)  # durable before the client sees [DONE]
            await out.write(b"data: [DONE]\n\n")
            await out.write_eof()
            return out
        except (asyncio.CancelledError, ConnectionResetError):
            # Client went away: stop upstream generation, bill what was produced so far.
            if resp is not None:
                resp.close()
            call.status, call.error_type = CLIENT_CLOSED, "client_disconnected"
            self._take_usage(call, relay.usage, relay.content_events)
            await self._finish(call)
            raise asyncio.CancelledError() from None
        finally:
            lease.release()
            call.upstream_ms = (time.perf_counter() - t_up) * 1000.0
            if resp is not None:
                resp.release()

    def _take_usage(self, call: Call, usage: dict | None, content_events: int = 0) -> None:
        if usage:
            call.prompt_tokens = int(usage.get("prompt_tokens") or call.prompt_tokens)
            call.completion_tokens = int(usage.get("completion_tokens") or 0)
        else:
            call.completion_tokens = content_events
        route = call.served
        if route is not None:
            call.cost = cost_micros(call.prompt_tokens, call.completion_tokens, route.model.input_price,
                                    route.model.output_price)

    async def _finish(self, call: Call) -> None:
        """Settle the reservation, record metrics, hand the usage event to the sink. Runs once."""
        if call.status == 0 or call.done:
            return
        call.done = True
        if call.reservation is not None and call.reservation.needs_settle:
            reservation, call.reservation = call.reservation, None
            billed = call.status < 400 or call.completion_tokens > 0
            self._spawn(self.limiter.settle(
                reservation,
                cost_micros=call.cost if billed else 0,
                tokens=(call.prompt_tokens + call.completion_tokens) if billed else 0,
            ))
        now = time.perf_counter()
        latency_ms = (now - call.t0) * 1000.0
        if call.t_upstream and not call.upstream_ms:
            call.upstream_ms = (now - call.t_upstream) * 1000.0
        route, state, info = call.served, call.state, call.info
        model_label = call.model or ""
        m = self.metrics
        m.child(m.requests, model_label, route.model.environment if route else "",
                state.endpoint.url if state else "", str(call.status)).inc()
        m.child(m.latency, model_label).observe(latency_ms / 1000.0)
        overhead_ms = latency_ms - call.upstream_ms if call.upstream_ms else None
        if overhead_ms is not None:
            m.overhead.observe(overhead_ms / 1000.0)
        if call.ttft_ms is not None:
            m.child(m.ttft, model_label).observe(call.ttft_ms / 1000.0)
        if call.prompt_tokens:
            m.child(m.tokens, model_label, "prompt").inc(call.prompt_tokens)
        if call.completion_tokens:
            m.child(m.tokens, model_label, "completion").inc(call.completion_tokens)
        if self.sink is None or info is None:
            return  # unauthenticated requests are not usage
        event = {
            "request_id": call.request_id, "ts": call.ts_us, "org_id": info.org.id, "key_id": info.key.id,
            "user_id": call.user, "model": call.model, "served_model": route.model.name if route else None,
            "environment": route.model.environment if route else None,
            "endpoint": state.endpoint.url if state else None, "release": state.endpoint.release if state else None,
            "status": call.status, "error_type": call.error_type, "stream": call.stream,
            "prompt_tokens": call.prompt_tokens, "completion_tokens": call.completion_tokens,
            "cost_micros": call.cost if call.status < 400 or call.completion_tokens else 0,
            "latency_ms": latency_ms, "ttft_ms": call.ttft_ms,
            "upstream_ms": call.upstream_ms or None, "gateway_overhead_ms": overhead_ms,
        }
        try:
            await self.sink.emit(event)
        except Exception:  # noqa: BLE001 - a sink failure must be visible, never fail a served request
            m.child(m.usage_events, "error").inc()
            log.exception("usage event %s could not be recorded", call.request_id)
