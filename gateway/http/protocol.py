"""Client connections at the edge: a header deadline, a connection cap, JSON answers to bad HTTP.

aiohttp has no header read timeout and answers malformed requests in plain text that may
quote the input; these subclasses of its connection handler and server close those gaps.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from gateway.appkeys import REQUEST_ID
from gateway.errors import FleetgateError, InternalError
from gateway.http.errors import (
    HeadersTooLarge,
    MalformedRequest,
    RequestTimeout,
    TooManyConnections,
    error_response,
    raw_response,
)
from gateway.observability.access_log import AccessLog

log = logging.getLogger(__name__)

# After an answer to a request whose body was not read (a 404, an early 401), aiohttp reads
# and discards the rest of the body for up to this long (its default), so the client gets
# the answer rather than a reset; never longer than body_read_timeout_s.
LINGER_S = 10.0
# A refused connection gets its 503, then its input is discarded for at most this long so the
# client can read the answer (closing with unread input would reset the connection).
REFUSED_LINGER_S = 1.0
_REFUSAL_LOG_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    header_timeout_s: float
    max_connections: int
    access_log: AccessLog | None


class EdgeServer(web.Server):
    """aiohttp's server (a protocol factory) making EdgeRequestHandlers; counts refusals."""

    def __init__(self, handler: Any, *, limits: EdgeLimits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits
        self.refused = 0  # connections turned away since start
        self._refusals_logged = 0
        self._refusal_logged_at = 0.0

    def __call__(self) -> EdgeRequestHandler:
        return EdgeRequestHandler(self, loop=self._loop, **self._kwargs)

    def at_capacity(self) -> bool:
        return len(self._connections) >= self.limits.max_connections

    def count_refusal(self) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._refusal_logged_at >= _REFUSAL_LOG_INTERVAL_S:  # one line per interval under a flood
            log.warning("refused %d connection(s): max_connections=%d reached",
                        self.refused - self._refusals_logged, self.limits.max_connections)
            self._refusals_logged, self._refusal_logged_at = self.refused, now


class EdgeRequestHandler(RequestHandler):
    """One client connection. Adds, to aiohttp's handling:

    - a header deadline: from connect, or from the first byte of a later request, the complete
      request head must arrive within `header_timeout_s` (408 if bytes came, else a silent close);
    - the connection cap: beyond `max_connections`, a 503 `too_many_connections` and a close;
    - OpenAI-shaped answers to unparsable requests (431 for oversized heads, 400 otherwise)
      that neither echo nor log the input.
    """

    __slots__ = ("_head_bytes", "_head_mark", "_head_timer", "_last_payload", "_limits")

    def __init__(self, manager: EdgeServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = manager.limits
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_mark = 0
        self._head_bytes = False
        self._last_payload: Any = None

    # --- the connection cap ------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        if isinstance(manager, EdgeServer) and manager.at_capacity():
            self._refuse(manager, transport)
            return
        super().connection_made(transport)
        self._arm_head_timer()

    def _refuse(self, manager: EdgeServer, transport: Any) -> None:
        self._manager = None  # connection_lost() then has nothing to unregister
        self._force_close = True  # data_received() discards input
        manager.count_refusal()
        error = TooManyConnections("The server has too many open connections; retry shortly.",
                                   headers={"Retry-After": "1"})
        transport.write(raw_response(error, os.urandom(16).hex()))
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(REFUSED_LINGER_S, transport.close)

    # --- the header deadline -----------------------------------------------
    def _arm_head_timer(self) -> None:
        self._head_mark = self._request_count
        self._head_bytes = False
        self._head_timer = self._loop.call_later(self._limits.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def data_received(self, data: bytes) -> None:
        count = self._request_count
        # Judged before parsing: a segment that ends a body leaves the payload complete, and
        # must not be taken for the first bytes of a next request head (that stale deadline
        # would later write a 408 on the idle keep-alive connection).
        payload = self._last_payload
        in_body = payload is not None and not payload.is_eof()
        super().data_received(data)
        if not data or self._force_close or self._close:
            return
        if self._request_count != count:  # a request head is complete (or failed to parse)
            self._cancel_head_timer()
            self._last_payload = self._messages[-1][1] if self._messages else None
            return
        if in_body:
            return  # body bytes: read_body() bounds those
        if self._head_timer is None:
            self._arm_head_timer()
        self._head_bytes = True

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport is None or self._force_close or self._request_count != self._head_mark:
            return
        if self._request_in_progress or self._messages:
            self.close()  # a pipelined head is late: finish what is in hand, then close
            return
        if self._head_bytes:
            error = RequestTimeout(f"The request headers were not received within "
                                   f"{self._limits.header_timeout_s:g} s.")
            request_id = os.urandom(16).hex()
            self.transport.write(raw_response(error, request_id))
            self._log_access(request_id, error)
        self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        self._last_payload = None
        super().connection_lost(exc)

    def skip_lingering(self) -> None:
        """Close after the answer without reading the rest of the request body."""
        self._lingering_time = 0.0

    # --- requests aiohttp could not parse ------------------------------------
    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's error answer, made OpenAI-shaped; the parser's `message` (it quotes input) is dropped."""
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        error = _error_for(status, exc)
        request_id = request.get(REQUEST_ID) or os.urandom(16).hex()
        if error.status >= 500:
            log.error("unhandled %s outside the app (request %s)", type(exc).__name__, request_id, exc_info=exc)
        else:
            log.debug("refused an unparsable request: %s", type(exc).__name__)
        if REQUEST_ID not in request:  # the edge middleware did not see it, so it has no access line yet
            self._log_access(request_id, error)
        return error_response(error, request_id, close=True)

    def _log_access(self, request_id: str, error: FleetgateError) -> None:
        access_log = self._limits.access_log
        if access_log is not None:
            access_log.write(request_id, "-", "-", error.status, 0.0, None, error.code)


def skip_lingering(request: web.BaseRequest) -> None:
    """A client too slow with its body, or whose body broke its framing, gets no lingering time."""
    protocol = request.protocol
    if isinstance(protocol, EdgeRequestHandler):  # always, unless an app is served by a bare AppRunner
        protocol.skip_lingering()


def _error_for(status: int, exc: BaseException | None) -> FleetgateError:
    # "Too many headers received" is aiohttp's message for a head with more than max_headers lines.
    if isinstance(exc, LineTooLong) or (isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message):
        return HeadersTooLarge("The request line or header fields are too large.")
    if status < 500:
        return MalformedRequest("The request could not be parsed as HTTP/1.1.")
    return InternalError("The server had an error processing your request.")
