"""The edge middleware: request ids, OpenAI-shaped errors for everything, one access line per request.

Nothing a handler raises reaches aiohttp's plain-text 500: bugs become `internal_error`
(logged with their traceback, never with the request's headers or body).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from gateway.appkeys import ACCESS, ACCESS_LOG, REQUEST_ID, SETTINGS
from gateway.errors import FleetgateError, InternalError, PayloadTooLarge
from gateway.http.errors import MalformedRequest, RequestTimeout, error_response
from gateway.http.protocol import skip_lingering

log = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
CLIENT_CLOSED = 499  # nginx's convention for "client closed the request"

__all__ = ["CLIENT_CLOSED", "edge_middleware", "error_response", "route_path"]


def _from_http(exc: web.HTTPException, limit: int) -> FleetgateError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge(f"Request body is too large: the limit is {limit} bytes ({limit / 2**20:g} MiB, "
                               "setting max_body_bytes).")
    error = FleetgateError(exc.reason if exc.status != 404 else "Unknown path.")
    error.status = exc.status
    error.type = "invalid_request_error"
    error.code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
    return error


def route_path(request: web.Request) -> str:
    """The route template (`/admin/v1/organizations/{name}`), else the path: never a query string."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


@web.middleware
async def edge_middleware(request: web.Request, handler):  # noqa: ANN001, ANN201 - aiohttp signature
    t0 = time.perf_counter()
    incoming = request.headers.get("X-Request-ID")
    request_id = incoming if incoming and _SAFE_ID.match(incoming) else os.urandom(16).hex()
    request[REQUEST_ID] = request_id
    status = 500
    error_code: str | None = None
    try:
        try:
            response = await handler(request)
        except FleetgateError as e:
            error_code = e.code
            response = error_response(e, request_id, close=isinstance(e, RequestTimeout))
        except web.HTTPException as e:
            if e.status < 400:
                status = e.status
                raise
            error = _from_http(e, request.app[SETTINGS].max_body_bytes)
            error_code = error.code
            response = error_response(error, request_id)
        except (HttpProcessingError, RequestPayloadError) as e:
            # The body broke its framing (bad chunk, cut short) while a handler read it. The
            # parser's message quotes the input, so it is neither logged nor echoed.
            log.info("malformed request body in %s %s (request %s): %s", request.method, route_path(request),
                     request_id, type(e).__name__)
            skip_lingering(request)
            error = MalformedRequest("The request body is malformed.")
            error_code = error.code
            response = error_response(error, request_id, close=True)
        except asyncio.CancelledError:
            status, error_code = CLIENT_CLOSED, "client_disconnected"
            raise
        except Exception as e:
            if isinstance(e, ConnectionError) and _client_gone(request):
                status, error_code = CLIENT_CLOSED, "client_disconnected"
                raise
            error_code = InternalError.code
            log.error("unhandled %s in %s %s (request %s)", type(e).__name__, request.method, route_path(request),
                      request_id, exc_info=e)
            if request.writer.output_size:
                raise  # the response has begun: aiohttp drops the connection, nothing more can be said
            response = error_response(InternalError(
                f"The server had an error processing your request (request id {request_id})."), request_id)
        status = response.status
        if "X-Request-ID" not in response.headers and not response.prepared:
            response.headers["X-Request-ID"] = request_id
        return response
    finally:
        access_log = request.app.get(ACCESS_LOG)
        if access_log is not None:
            access_log.write(request_id, request.method, route_path(request), status,
                             (time.perf_counter() - t0) * 1000.0, request.get(ACCESS), error_code)
