"""Admin API plumbing: bearer-token auth, body parsing, JSON replies (input checks: `inputs`)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway import appkeys
from gateway.auth.secrets import tokens_equal
from gateway.errors import AuthenticationFailed, json_object
from gateway.http.body import read_body


def require_admin(request: web.Request) -> str:
    """Check the admin bearer token; return the actor name for the audit log."""
    token = request.app[appkeys.SETTINGS].admin_token
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if not token:
        raise AuthenticationFailed("The admin API is disabled: no admin token is configured.")
    if scheme.lower() != "bearer" or not presented or not tokens_equal(presented.strip(), token):
        raise AuthenticationFailed("Invalid or missing admin token.", code="invalid_admin_token")
    return "admin"


def reply(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def json_body(request: web.Request) -> dict[str, Any]:
    return json_object(await read_body(request, request.app[appkeys.SETTINGS]))

