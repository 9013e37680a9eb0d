"""Admin API plumbing: bearer-token auth, body parsing and field validation, JSON replies."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web

from gateway import appkeys
from gateway.auth.secrets import tokens_equal
from gateway.errors import AuthenticationFailed, InvalidRequest, json_object

_MISSING = object()


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
    return json_object(await request.read())


def field(
    body: dict[str, Any],
    name: str,
    kind: type | tuple[type, ...],
    *,
    required: bool = False,
    default: Any = None,
    minimum: float | None = None,
    choices: Iterable[str] | None = None,
) -> Any:
    """Read and validate one field; raise InvalidRequest naming it."""
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise InvalidRequest(f"'{name}' is required.", param=name)
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise InvalidRequest(f"'{name}' must be of type {'/'.join(k.__name__ for k in kinds)}.", param=name)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kinds):
        raise InvalidRequest(f"'{name}' must be of type {'/'.join(k.__name__ for k in kinds)}.", param=name)
    if isinstance(value, str) and not value.strip():
        raise InvalidRequest(f"'{name}' must not be empty.", param=name)
    if minimum is not None and isinstance(value, int | float) and value < minimum:
        raise InvalidRequest(f"'{name}' must be >= {minimum:g}.", param=name)
    if choices is not None and value not in tuple(choices):
        raise InvalidRequest(f"'{name}' must be one of: {', '.join(choices)}.", param=name)
    return value


def string_list(body: dict[str, Any], name: str) -> tuple[str, ...]:
    value = body.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidRequest(f"'{name}' must be a list of non-empty strings.", param=name)
    return tuple(value)


def query_int(request: web.Request, name: str, default: int, *, minimum: int = 1, maximum: int = 10_000) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise InvalidRequest(f"query parameter '{name}' must be an integer.", param=name) from e
    if not minimum <= value <= maximum:
        raise InvalidRequest(f"query parameter '{name}' must be between {minimum} and {maximum}.", param=name)
    return value
