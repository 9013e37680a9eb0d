"""The request path: authenticate, validate, limit, route, forward (with failover), settle, record usage.

One `DataPlane` per process holds everything the hot path touches; handlers are thin.
Nothing here queries the store per request: keys and the registry come from snapshots.
Whatever happens after a reservation — an error, a bug, a disconnect — the reservation is
settled and the request's usage row written, in one `finally`. Each upstream attempt is
also counted for the release it went to (fleetgate_release_*, traffic="live"), and copies
of the request go to mirroring endpoints (gateway/proxy/shadow.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from aiohttp import web

from analytics_lake.sink import UsageSink
from gateway.appkeys import ACCESS, REQUEST_ID
from gateway.auth.authenticator import Authenticator, KeyInfo
from gateway.auth.signing import SIGNATURE_HEADER, parse_header
from gateway.errors import (
    FleetgateError,
    InternalError,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    UpstreamError,
)
from gateway.http.body import read_body
from gateway.limits.base import BudgetRule, Limiter, LimitPolicy, Reservation
from gateway.limits.pricing import cost_micros
from gateway.observability.metrics import Metrics, ReleaseSeries, outcome_of
from gateway.proxy.billing import Billed, bill, bill_partial
from gateway.proxy.call import CLIENT_CLOSED, Call
from gateway.proxy.forward import Forwarder, Retryable
from gateway.proxy.requests import InferenceRequest, parse_request, validate
from gateway.proxy.shadow import Shadows
from gateway.proxy.streaming import GarbageStream, SseRelay
from gateway.routing.balancer import Balancer, EndpointState, acquire
from gateway.routing.health import PassiveHealth
from gateway.routing.registry import Registry, Route
from gateway.settings import Settings
from gateway.store.base import Store
from gateway.store.models import Model
from gateway.upstream import UpstreamPool, UpstreamProtocolError, UpstreamSaturated, UpstreamTimeoutError

if TYPE_CHECKING:
    from gateway.admin.auditing import AuditStream

log = logging.getLogger(__name__)

JSON = "application/json"
UNKNOWN_MODEL = "unknown"  # metric label for requests that never resolved to a registry model


def model_timeouts(model: Model, settings: Settings) -> tuple[float, float]:
    """(first-byte timeout s, per-output-token allowance s) of a model: its metadata
    `first_byte_timeout_s` / `token_timeout_ms` when valid, else the settings' defaults."""
    first, per_token = settings.upstream_first_byte_timeout_s, settings.upstream_token_timeout_ms / 1000.0
    meta = model.metadata or {}
    value = meta.get("first_byte_timeout_s")
    if type(value) in (int, float) and 0 < value < math.inf:
        first = float(value)
    value = meta.get("token_timeout_ms")
    if type(value) in (int, float) and 0 <= value < math.inf:
        per_token = value / 1000.0
    return first, per_token


def unary_deadline(model: Model, req: InferenceRequest, settings: Settings) -> float:
    """Longest time a non-streamed answer of `req` may take: its first-byte timeout plus the
    per-token allowance for every token it may produce, capped by upstream_timeout_s."""
    first_byte_s, per_token_s = model_timeouts(model, settings)
    return min(settings.upstream_timeout_s, first_byte_s + per_token_s * req.max_output_tokens)


def _attempt_failed(series: ReleaseSeries, raised: Retryable | FleetgateError) -> None:
    """Count an attempt that raised against its release: 4xx passed on to the client are client
    errors, everything else the pod's; a request that never left the gateway (no free connection
    to the pod) is not the release's doing."""
    error = raised.error if isinstance(raised, Retryable) else raised
    if not isinstance(error, UpstreamSaturated):
        series.record(outcome_of(error.status))


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
        # The Redis mirror of the audit log, set at start-up by gateway.admin.auditing when configured.
        self.audit_stream: AuditStream | None = None
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
        self.forwarder: Forwarder | None = None
        self.shadows: Shadows | None = None
        self.session: aiohttp.ClientSession | None = None  # health probes only (GET, off the hot path)
        self._background: set[asyncio.Task] = set()
        self._policies: dict[str, tuple[KeyInfo, LimitPolicy]] = {}

    # --- lifecycle --------------------------------------------------------
    async def start(self) -> None:
        self.session = aiohttp.ClientSession(skip_auto_headers=("User-Agent",))
        self.upstream = UpstreamPool(connect_timeout_s=self.settings.upstream_connect_timeout_s,
                                     read_timeout_s=self.settings.upstream_timeout_s,
                                     max_connections_per_host=self.settings.upstream_max_connections_per_host,
                                     queue_timeout_s=self.settings.upstream_queue_timeout_s)
        self.forwarder = Forwarder(self.upstream, self.health, self.metrics)
        settings = self.settings
        self.shadows = Shadows(self.upstream, self.metrics, max_in_flight=settings.shadow_max_in_flight,
                               deadline=lambda model, req: unary_deadline(model, req, settings))

    async def close(self) -> None:
        if self.shadows is not None:
            await self.shadows.close()
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
            self._spawn(self._audit_soft_limit(rule, period))

    async def _audit_soft_limit(self, rule: BudgetRule, period_key: str) -> None:
        """The audit entry of a budget's first request over its soft limit in a period (actor: the gateway)."""
        assert self.store is not None
        alert = {"scope": rule.scope, "period": rule.period, "period_key": period_key,
                 "limit_micros": rule.limit_micros, "soft_limit_pct": rule.soft_limit_pct}
        entry = await self.store.add_audit("gateway", "budget.soft_limit", rule.scope_id, alert, actor_type="gateway",
                                           actor_id="gateway", org_id=rule.org_id, after=alert)
        if self.audit_stream is not None:
            await self.audit_stream.publish(entry)

    async def _reserve(self, call: Call, route: Route, req: InferenceRequest) -> None:
        """Reserve the request's maximum cost: its prompt bound and every output token it may get,
        priced at the most expensive model it may end up on (fallbacks)."""
        assert call.info is not None
        policy = self.policy_for(call.info)
        if not (policy.budgets or policy.key_rpm or policy.key_tpm or policy.org_rpm or policy.org_tpm):
            return
        reserve = max(cost_micros(req.prompt_bound, req.max_output_tokens, r.model.input_price, r.model.output_price)
                      for r in self._chain(route, route.model.environment))
        # A client that leaves during the reserve cancels it; the limiter then frees what it may
        # have reserved (see RedisLimiter.reserve), so no reservation waits for its lease.
        call.reservation = await self.limiter.reserve(
            policy, cost_micros=reserve, tokens=req.prompt_bound + req.max_output_tokens)
        call.extra_headers = call.reservation.headers
        if call.reservation.soft_limit_hit:
            self._soft_limit(call.info, call.reservation)

    # --- the request path -------------------------------------------------
    async def authenticate(self, request: web.Request) -> tuple[KeyInfo, bytes]:
        """The caller's key and the raw body. A bearer key is checked before the body is read; a signed
        request once it is read, since its signature covers the exact bytes received."""
        header = request.headers.get(SIGNATURE_HEADER)
        if header is None:
            info = await self.auth.authenticate(request.headers.get("Authorization"))
            return info, await read_body(request, self.settings)
        signature = parse_header(header)
        raw = await read_body(request, self.settings)
        return await self.auth.authenticate_signed(signature, request.method, request.raw_path, raw), raw

    async def handle(self, request: web.Request, kind: str, upstream_path: str) -> web.StreamResponse:
        call = Call(request_id=request.get(REQUEST_ID) or uuid.uuid4().hex,
                    ts_us=time.time_ns() // 1000, t0=time.perf_counter())
        try:
            call.info, raw = await self.authenticate(request)
            body = parse_request(raw, kind)
            call.model = body["model"]
            route = call.route = self.resolve(call.info, call.model)
            req = call.req = validate(body, kind, default_max_tokens=route.model.max_tokens,
                                      model_name=route.model.name)
            call.stream, call.user, call.prompt_tokens = req.stream, req.user, req.prompt_bound
            await self._reserve(call, route, req)
            return await self._forward(request, call, route, req, upstream_path)
        except FleetgateError as e:
            call.status = call.status or e.status
            call.error_type = call.error_type or e.code or e.type
            if e.status == 429:
                self.metrics.child(self.metrics.limited, e.code or "limited").inc()
            raise
        except web.HTTPException as e:  # aiohttp's own (e.g. 413 from the body reader): the edge renders it
            call.status, call.error_type = e.status, "http_error"
            raise
        except asyncio.CancelledError:
            if not call.done:
                call.status, call.error_type = CLIENT_CLOSED, "client_disconnected"
            raise
        except Exception as e:
            log.exception("request %s failed inside the gateway", call.request_id)
            call.status, call.error_type = 500, "internal_error"
            raise InternalError(f"The gateway failed to handle this request (request id {call.request_id}).") from e
        finally:
            if not call.done:
                if call.status == 0:
                    call.status, call.error_type = 500, "internal_error"
                await self._finish(call)
            info, state = call.info, call.state
            request[ACCESS] = {  # for the access log, written by the edge middleware
                "org_id": info.org.id if info else None, "key_id": info.key.id if info else None,
                "model": call.model, "endpoint": state.endpoint.url if state else None,
                "upstream_ms": call.upstream_ms or None, "error_code": call.error_type,
            }

    async def _forward(self, request: web.Request, call: Call, route: Route, req: InferenceRequest,
                       path: str) -> web.StreamResponse:
        env = route.model.environment
        affinity = request.headers.get("X-Session-ID") or req.user
        tried: set[str] = set()
        last_error: FleetgateError | None = None
        attempts = 0
        if self.shadows is not None:
            self.shadows.mirror(route, req, path, call.request_id)
        for candidate in self._chain(route, env):  # cheap: usually one model
            model = candidate.model
            first_byte_s, per_token_s = model_timeouts(model, self.settings)
            while attempts < self.settings.max_attempts:
                state = self.balancer.pick(candidate.states, affinity_key=affinity, exclude=tried)
                if state is None:
                    break
                attempts += 1
                tried.add(state.endpoint.id)
                if attempts > 1:
                    self.metrics.child(self.metrics.retries, route.model.name).inc()
                served_model = state.served_model or model.name
                payload = req.payload(served_model)
                call.served, call.state = candidate, state
                series = self.metrics.release_series(model.name, model.environment, state.release, "live")
                try:
                    if req.stream:
                        return await self._stream(request, call, state, series, path, payload, served_model,
                                                  first_byte_s)
                    deadline = min(self.settings.upstream_timeout_s,
                                   first_byte_s + per_token_s * req.max_output_tokens)
                    return await self._unary(call, state, series, path, payload, served_model, first_byte_s,
                                             deadline)
                except Retryable as e:
                    last_error = e.error
                    continue
        raise last_error or ServiceUnavailable(f"No healthy endpoint for model '{route.model.name}' in '{env}'.")

    async def _unary(self, call: Call, state: EndpointState, series: ReleaseSeries, path: str, payload: bytes,
                     served_model: str, first_byte_s: float, deadline_s: float) -> web.Response:
        assert self.forwarder is not None and call.req is not None
        lease = acquire(state)
        t_up = time.perf_counter()
        try:
            data, doc = await self.forwarder.unary(state, path, payload, call.request_id, served_model=served_model,
                                                   first_byte_s=first_byte_s, deadline_s=deadline_s)
        except (Retryable, FleetgateError) as e:
            _attempt_failed(series, e)
            raise
        finally:
            lease.release()
            call.upstream_ms = (time.perf_counter() - t_up) * 1000.0
        series.record("ok", call.upstream_ms / 1000.0)
        self.forwarder.succeed(state)
        self._bill(call, bill(call.req, doc.get("usage")), state)
        call.status = 200
        await self._finish(call)
        headers = {"X-Request-ID": call.request_id, **call.extra_headers}
        return web.Response(body=data, status=200, content_type=JSON, headers=headers)

    async def _stream(self, request: web.Request, call: Call, state: EndpointState, series: ReleaseSeries,
                      path: str, payload: bytes, served_model: str, first_byte_s: float) -> web.StreamResponse:
        assert self.forwarder is not None and call.req is not None
        req = call.req
        lease = acquire(state)
        t_up = call.t_upstream = time.perf_counter()
        relay = SseRelay(client_wants_usage=req.wants_usage)
        resp = None
        try:
            try:
                resp, first = await self.forwarder.open_stream(state, path, payload, call.request_id,
                                                               served_model=served_model, first_byte_s=first_byte_s,
                                                               relay=relay)
            except (Retryable, FleetgateError) as e:
                _attempt_failed(series, e)
                raise
            # The attempt's own time to first event (the client's TTFT, in call.ttft_ms, starts earlier).
            ttft_up_s = time.perf_counter() - t_up if first else None
            out = web.StreamResponse(status=200, headers={
                "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                "X-Request-ID": call.request_id, **call.extra_headers})
            out.enable_chunked_encoding()
            await out.prepare(request)
            broken = None
            try:
                if first:
                    call.ttft_ms = (time.perf_counter() - call.t0) * 1000.0
                    await out.write(first)
                async for chunk in resp.iter_chunks():
                    data = relay.feed(chunk)
                    if data:
                        if call.ttft_ms is None:
                            call.ttft_ms = (time.perf_counter() - call.t0) * 1000.0
                        if ttft_up_s is None:
                            ttft_up_s = time.perf_counter() - t_up
                        await out.write(data)
                upstream_s = time.perf_counter() - t_up
                rest = relay.flush()
                if rest:
                    await out.write(rest)
                if not relay.done:
                    broken = "The model endpoint ended the stream without [DONE]."
            except (UpstreamProtocolError, UpstreamTimeoutError):
                broken = "The model endpoint broke off the stream."
            except GarbageStream as e:
                self.metrics.child(self.metrics.upstream_garbage, "stream").inc()
                broken = f"The model endpoint's stream turned into something else ({e})."
            if broken is not None:
                # Too late to retry: end the stream with an error event (and no [DONE]).
                series.record("error")
                self.forwarder.fail(state)
                call.status, call.error_type = 502, "upstream_stream_broken"
                self._bill(call, bill_partial(req, relay.content_events), state)
                await self._finish(call)
                await out.write(b"data: " + orjson.dumps(UpstreamError(broken).to_dict()) + b"\n\n")
                await out.write_eof()
                return out
            series.record("ok", upstream_s, ttft_up_s)
            self.forwarder.succeed(state)
            call.status = 200
            self._bill(call, bill(req, relay.usage) if relay.usage_seen else bill(req, None), state)
            await self._finish(call)  # durable before the client sees [DONE]
            await out.write(b"data: [DONE]\n\n")
            await out.write_eof()
            return out
        except (asyncio.CancelledError, ConnectionResetError):
            # Client went away: stop upstream generation, bill what was produced so far.
            if resp is not None:
                resp.close()
            if not call.done:
                call.status, call.error_type = CLIENT_CLOSED, "client_disconnected"
                self._bill(call, bill_partial(req, relay.content_events), state)
                await self._finish(call)
            raise asyncio.CancelledError() from None
        finally:
            lease.release()
            call.upstream_ms = (time.perf_counter() - t_up) * 1000.0
            if resp is not None:
                resp.release()

    def _bill(self, call: Call, billed: Billed, state: EndpointState) -> None:
        """Price the billed tokens at the serving model; a refused usage report counts against the pod."""
        if billed.refused is not None:
            self.metrics.child(self.metrics.bad_usage, billed.refused).inc()
            log.warning("request %s: usage report from endpoint %s refused (%s); billed the reserved amounts",
                        call.request_id, state.endpoint.id, billed.refused)
            assert self.forwarder is not None
            self.forwarder.fail(state)
        elif billed.prompt_over_bound:
            log.warning("request %s: endpoint %s counted more prompt tokens than the gateway's upper bound; "
                        "billed the bound", call.request_id, state.endpoint.id)
        call.prompt_tokens, call.completion_tokens = billed.prompt_tokens, billed.completion_tokens
        route = call.served
        if route is not None:
            call.cost = cost_micros(call.prompt_tokens, call.completion_tokens, route.model.input_price,
                                    route.model.output_price)

    async def _finish(self, call: Call) -> None:
        """Settle the reservation, record metrics, hand the usage event to the sink. Runs once, never raises."""
        if call.done:
            return
        call.done = True
        billed = call.status < 400 or call.completion_tokens > 0
        if call.reservation is not None and call.reservation.needs_settle:
            reservation, call.reservation = call.reservation, None
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
        # Labels only from the registry: a client's model string never becomes a series.
        model_label = call.route.model.name if call.route is not None else UNKNOWN_MODEL
        m = self.metrics
        # A request no endpoint served still counts in its model's environment (the fleet view shows its errors).
        environment = route.model.environment if route else (call.route.model.environment if call.route else "")
        m.child(m.requests, model_label, environment, state.endpoint.url if state else "", str(call.status)).inc()
        m.child(m.latency, model_label, environment).observe(latency_ms / 1000.0)
        overhead_ms = latency_ms - call.upstream_ms if call.upstream_ms else None
        if overhead_ms is not None:
            m.overhead.observe(overhead_ms / 1000.0)
        if call.ttft_ms is not None:
            m.child(m.ttft, model_label).observe(call.ttft_ms / 1000.0)
        if billed and call.prompt_tokens:
            m.child(m.tokens, model_label, "prompt").inc(call.prompt_tokens)
        if call.completion_tokens:
            m.child(m.tokens, model_label, "completion").inc(call.completion_tokens)
        if billed and call.cost:
            m.child(m.spend, model_label).inc(call.cost / 1_000_000)
        if self.sink is None or info is None:
            return  # unauthenticated requests are not usage
        event = {
            "request_id": call.request_id, "ts": call.ts_us, "org_id": info.org.id, "key_id": info.key.id,
            "user_id": call.user, "model": call.model, "served_model": route.model.name if route else None,
            "environment": environment or None,  # also for requests no endpoint served (503s count in SLOs)
            "endpoint": state.endpoint.url if state else None, "release": state.endpoint.release if state else None,
            "status": call.status, "error_type": call.error_type, "stream": call.stream,
            "prompt_tokens": call.prompt_tokens if billed else 0, "completion_tokens": call.completion_tokens,
            "cost_micros": call.cost if billed else 0,
            "latency_ms": latency_ms, "ttft_ms": call.ttft_ms,
            "upstream_ms": call.upstream_ms or None, "gateway_overhead_ms": overhead_ms,
        }
        try:
            await self.sink.emit(event)
        except Exception:  # noqa: BLE001 - a sink failure must be visible, never fail a served request
            m.child(m.usage_events, "error").inc()
            log.exception("usage event %s could not be recorded", call.request_id)
