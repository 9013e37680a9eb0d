"""Reading a request body with a deadline, so a client trickling its body cannot hold a handler.

Every handler that needs a body calls `read_body` instead of `request.read()`.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from gateway.http.errors import MalformedRequest, RequestTimeout
from gateway.http.protocol import skip_lingering
from gateway.settings import Settings


async def read_body(request: web.Request, settings: Settings) -> bytes:
    """The whole body, read within `settings.body_read_timeout_s`.

    Raises:
        RequestTimeout: 408, the body did not arrive in time (the connection is then closed).
        MalformedRequest: 400, the body broke its framing (bad chunk encoding, cut short).
        web.HTTPRequestEntityTooLarge: above `max_body_bytes` (the middleware answers 413).
    """
    try:
        if request.content.is_eof():  # it came with the headers (the usual case): no timer needed
            return await request.read()
        async with asyncio.timeout(settings.body_read_timeout_s):
            return await request.read()
    except TimeoutError as e:
        skip_lingering(request)
        raise RequestTimeout(
            f"The request body was not received within {settings.body_read_timeout_s:g} s.") from e
    except (HttpProcessingError, RequestPayloadError) as e:
        skip_lingering(request)
        raise MalformedRequest("The request body is malformed.") from e

