"""Errors of the HTTP edge itself: timeouts, oversized or malformed requests, overload.

They render like every FleetgateError; `raw_response` serves them before aiohttp has a request.
"""

from __future__ import annotations

from http import HTTPStatus

import orjson
from aiohttp import web

from gateway.errors import FleetgateError, InvalidRequest, ServiceUnavailable


class RequestTimeout(FleetgateError):
    """The client did not send its headers or body in time; the connection is closed after."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class HeadersTooLarge(FleetgateError):
    status = 431
    type = "invalid_request_error"
    code = "request_header_fields_too_large"


class MalformedRequest(InvalidRequest):
    code = "malformed_request"


class TooManyConnections(ServiceUnavailable):
    code = "too_many_connections"


def error_response(error: FleetgateError, request_id: str, *, close: bool = False) -> web.Response:
    headers = {"X-Request-ID": request_id, **error.headers}
    response = web.Response(body=orjson.dumps(error.to_dict()), status=error.status,
                            content_type="application/json", headers=headers)
    if close:
        response.force_close()
    return response


def raw_response(error: FleetgateError, request_id: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection, for answers outside a request."""
    body = orjson.dumps(error.to_dict())
    extra = "".join(f"{name}: {value}\r\n" for name, value in error.headers.items())
    head = (f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\nX-Request-ID: {request_id}\r\n{extra}\r\n")
    return head.encode("latin-1") + body
