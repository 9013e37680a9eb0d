"""`/openapi.json`: the gateway's routes described from the router itself, so it cannot drift.

Each operation's summary is its handler's docstring's first line; the OpenAI-compatible
routes reference OpenAI's own schemas by name rather than copying them.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "object", "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "code": {"type": ["string", "null"]}, "param": {"type": ["string", "null"]}}}},
}
_PARAM = re.compile(r"{(\w+)}")


OAUTH2_ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
}


def _tag(path: str) -> str:
    if path.startswith("/admin/"):
        return "admin"
    if path.startswith("/analytics/"):
        return "analytics"
    if path.startswith("/oauth2/"):
        return "oauth2"
    return "status" if "status" in path or path == "/metrics" else "inference"


def build_spec(app: web.Application, version: str) -> dict[str, Any]:
    from gateway.admin.access import is_public, rule_for

    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS", "*"):
            continue
        path = route.resource.canonical if route.resource is not None else None
        if not path or path == "/openapi.json":
            continue
        doc = (route.handler.__doc__ or route.handler.__name__.replace("_", " ")).strip().splitlines()[0]
        tag = _tag(path)
        error = ({"description": "OAuth2 error (RFC 6749 §5.2)",
                  "content": {"application/json": {"schema": OAUTH2_ERROR_SCHEMA}}} if tag == "oauth2" else
                 {"description": "OpenAI-shaped error", "content": {"application/json": {"schema": ERROR_SCHEMA}}})
        operation: dict[str, Any] = {"summary": doc, "tags": [tag],
                                     "responses": {"200": {"description": "OK"}, "default": error}}
        rule = rule_for(route.method, path) if tag in ("admin", "analytics") else None
        if rule is not None:
            operation["description"] = f"Needs the {rule.role} role ({rule.scope} scope; docs/access-control.md)."
        params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                  for p in _PARAM.findall(path)]
        if params:
            operation["parameters"] = params
        if route.method in ("POST", "PUT", "PATCH"):
            operation["requestBody"] = {"content": {"application/json": {"schema": {"type": "object"}}}}
        if tag in ("admin", "inference") or (tag == "analytics" and not is_public(route.method, path)):
            operation["security"] = [{"bearer": []}]
        paths.setdefault(path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Fleetgate gateway", "version": version,
                 "description": "OpenAI-compatible inference plus the Fleetgate admin and analytics APIs."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": dict(sorted(paths.items())),
    }


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of this gateway."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("fleetgate")
    except PackageNotFoundError:
        v = "0"
    return web.json_response(build_spec(request.app, v))
