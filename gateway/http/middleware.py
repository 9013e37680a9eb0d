"""The one middleware: request ids and OpenAI-shaped errors for everything that goes wrong."""

from __future__ import annotations

import logging
import os
import re

import orjson
from aiohttp import web

from gateway.appkeys import REQUEST_ID
from gateway.errors import FleetgateError, PayloadTooLarge

log = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def error_response(error: FleetgateError, request_id: str) -> web.Response:
    headers = {"X-Request-ID": request_id, **error.headers}
    return web.Response(body=orjson.dumps(error.to_dict()), status=error.status,
                        content_type="application/json", headers=headers)


def _from_http(exc: web.HTTPException) -> FleetgateError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("Request body is too large.")
    error = FleetgateError(exc.reason if exc.status != 404 else "Unknown path.")
    error.status = exc.status
    error.type = "invalid_request_error"
    error.code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
    return error


@web.middleware
async def errors_and_request_id(request: web.Request, handler):  # noqa: ANN001, ANN201 - aiohttp signature
    incoming = request.headers.get("X-Request-ID")
    request_id = incoming if incoming and _SAFE_ID.match(incoming) else os.urandom(16).hex()
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except FleetgateError as e:
        return error_response(e, request_id)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(_from_http(e), request_id)
    if "X-Request-ID" not in response.headers and not response.prepared:
        response.headers["X-Request-ID"] = request_id
    return response
