"""Talking to one endpoint: send within a deadline, and accept only answers that are what they claim.

Everything that goes wrong before a byte reached the client raises `Retryable` (the data plane
tries another endpoint), and everything that is the pod's fault — refused connections, time-outs,
5xx, a 200 that is not JSON, a stream that is not SSE, a pod found hung when its first byte is
late (gateway/proxy/liveness.py) — is counted against the endpoint's passive health, so a hung
or broken pod is ejected.
"""

from __future__ import annotations

import asyncio
import time

import orjson

from gateway.errors import FleetgateError, ServiceUnavailable, UpstreamError, UpstreamTimeout
from gateway.observability.metrics import Metrics
from gateway.proxy.liveness import Liveness, StallWatch
from gateway.proxy.streaming import GarbageStream, SseRelay
from gateway.routing.balancer import EndpointState
from gateway.routing.health import PassiveHealth
from gateway.upstream import (
    UpstreamConnectError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamSaturated,
    UpstreamTimeoutError,
)

MAX_MESSAGE = 1000  # characters of an upstream error message passed on


class Retryable(Exception):
    """Nothing reached the client: the request may go to another endpoint."""

    def __init__(self, error: FleetgateError) -> None:
        super().__init__(error.message)
        self.error = error


class Forwarder:
    """Sends one request to one endpoint and judges the answer (see module docstring)."""

    def __init__(self, pool: UpstreamPool, health: PassiveHealth, metrics: Metrics) -> None:
        self.pool = pool
        self.health = health
        self.metrics = metrics
        self.liveness = Liveness(pool)

    def fail(self, state: EndpointState) -> None:
        """Count a failure against the endpoint (ejects it after enough in a row)."""
        if self.health.record_failure(state, time.monotonic()):
            self.metrics.child(self.metrics.ejections, state.endpoint.url).inc()

    def succeed(self, state: EndpointState) -> None:
        self.health.record_success(state, time.monotonic())

    async def _send(self, state: EndpointState, path: str, payload: bytes, request_id: str) -> UpstreamResponse:
        try:
            return await self.pool.request(state.endpoint.url, path, payload, (("X-Request-ID", request_id),))
        except UpstreamTimeoutError as e:
            self.fail(state)
            raise Retryable(UpstreamTimeout("The model endpoint timed out.")) from e
        except (UpstreamConnectError, UpstreamProtocolError) as e:
            self.fail(state)
            raise Retryable(UpstreamError(f"Could not reach the model endpoint ({type(e).__name__}).")) from e
        except UpstreamSaturated as e:
            # Our own connection cap, not the pod's fault: try another endpoint, count nothing.
            self.metrics.upstream_saturated.inc()
            raise Retryable(e) from e

    async def _read(self, state: EndpointState, resp: UpstreamResponse) -> bytes:
        try:
            return await resp.read()
        except UpstreamTimeoutError as e:
            self.fail(state)
            raise Retryable(UpstreamTimeout("The model endpoint timed out.")) from e
        except UpstreamProtocolError as e:
            self.fail(state)
            raise Retryable(UpstreamError("The model endpoint dropped the connection.")) from e

    def _late(self, state: EndpointState, deadline_s: float, what: str, stage: str) -> Retryable:
        self.fail(state)
        self.metrics.child(self.metrics.upstream_slow, stage).inc()
        return Retryable(UpstreamTimeout(f"The model endpoint did not {what} within {deadline_s:g} s."))

    def _watch(self, state: EndpointState, path: str, served_model: str, stream: bool,
               first_byte_s: float) -> StallWatch:
        return StallWatch(lambda: self.liveness.check(state, path, served_model, stream, first_byte_s), first_byte_s)

    def _hung(self, watch: StallWatch, state: EndpointState, first_byte_s: float, what: str) -> Retryable | None:
        """The Retryable for a request the stall watch cancelled, or None for a real cancellation."""
        task = asyncio.current_task()
        if not watch.hung or task is None or task.uncancel() > 0:
            return None
        return self._late(state, first_byte_s, f"{what}, and failed a liveness check", "hung")

    def _rejected(self, state: EndpointState, resp: UpstreamResponse, data: bytes) -> FleetgateError:
        """The error for a non-200 answer; Retryable for 5xx and 404 (a pod that does not serve
        the model), passed on to the client for other 4xx (the request itself was refused)."""
        message = f"Upstream returned {resp.status}."
        try:
            detail = orjson.loads(data)
        except orjson.JSONDecodeError:
            detail = None
        if isinstance(detail, dict):
            inner = detail.get("error") if isinstance(detail.get("error"), dict) else detail
            if isinstance(inner.get("message"), str) and inner["message"]:
                message = inner["message"][:MAX_MESSAGE]
        if resp.status >= 500 or resp.status == 404:
            # Nothing reached the client yet, and a 5xx is the engine's failure, not the request's
            # (vLLM answers 500 for engine errors): another endpoint may well serve it.
            self.fail(state)
            return Retryable(ServiceUnavailable(message) if resp.status == 503 else UpstreamError(message))
        error = FleetgateError(message)
        error.status = resp.status if 400 <= resp.status < 500 else 502
        error.type = "invalid_request_error"
        error.code = "upstream_rejected"
        return error

    async def unary(self, state: EndpointState, path: str, payload: bytes, request_id: str, *,
                    served_model: str, first_byte_s: float, deadline_s: float) -> tuple[bytes, dict]:
        """POST and read the whole answer; returns (raw body, parsed object).

        After `first_byte_s` without an answer the pod's liveness is checked (a hung pod is
        abandoned); `deadline_s` bounds the whole answer in any case.

        Raises:
            Retryable: unreachable, hung, past the deadline, 5xx/404, or a 200 that is not a JSON object.
            FleetgateError: the pod refused the request (4xx other than 404): passed on.
        """
        watch = self._watch(state, path, served_model, False, first_byte_s)
        try:
            async with asyncio.timeout(deadline_s):
                with watch:
                    resp = await self._send(state, path, payload, request_id)
                    try:
                        data = await self._read(state, resp)
                    finally:
                        resp.release()
        except TimeoutError as e:
            raise self._late(state, deadline_s, "answer", "deadline") from e
        except asyncio.CancelledError:
            hung = self._hung(watch, state, first_byte_s, "answer")
            if hung is None:
                raise
            raise hung from None
        if resp.status != 200:
            raise self._rejected(state, resp, data)
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            self.fail(state)
            self.metrics.child(self.metrics.upstream_garbage, "unary").inc()
            raise Retryable(UpstreamError("The model endpoint answered 200 with a body that is not a JSON object."))
        return data, doc

    async def open_stream(self, state: EndpointState, path: str, payload: bytes, request_id: str, *,
                          served_model: str, first_byte_s: float, relay: SseRelay) -> tuple[UpstreamResponse, bytes]:
        """POST a streaming request and wait for its first events.

        After `first_byte_s` without an event the pod's liveness is checked (a streaming probe);
        a hung pod is abandoned, a busy one waited for. Returns the open response and the first
        bytes to relay (empty only if the stream ended with `[DONE]` and nothing before it).
        The caller owns the response (release/close it).

        Raises:
            Retryable: as for `unary`, plus a stream that is not SSE or that ends before any event.
            FleetgateError: the pod refused the request (4xx other than 404).
        """
        resp: UpstreamResponse | None = None
        watch = self._watch(state, path, served_model, True, first_byte_s)
        try:
            with watch:
                resp = await self._send(state, path, payload, request_id)
                if resp.status != 200:
                    raise self._rejected(state, resp, await self._read(state, resp))
                content_type = resp.headers.get("Content-Type", "")
                if not content_type.startswith("text/event-stream"):
                    raise GarbageStream(f"content type {content_type[:60]!r}")
                async for chunk in resp.iter_chunks():
                    first = relay.feed(chunk)
                    if first or relay.done:
                        return resp, first
                first = relay.flush()
                if first or relay.done:
                    return resp, first
                raise GarbageStream("the stream ended before its first event")
        except asyncio.CancelledError:
            if resp is not None:
                resp.close()
            hung = self._hung(watch, state, first_byte_s, "send its first event")
            if hung is None:
                raise
            raise hung from None
        except GarbageStream as e:
            resp.close()  # type: ignore[union-attr]  # set: raised after the response arrived
            self.fail(state)
            self.metrics.child(self.metrics.upstream_garbage, "stream").inc()
            raise Retryable(UpstreamError(f"The model endpoint's stream is not an event stream ({e}).")) from e
        except (UpstreamTimeoutError, UpstreamProtocolError) as e:
            if resp is not None:
                resp.close()
            self.fail(state)
            raise Retryable(UpstreamError("The model endpoint broke off the stream before its first event.")) from e
        except BaseException:
            if resp is not None:
                resp.close()
            raise
