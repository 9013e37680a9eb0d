"""Admin API plumbing: body parsing, JSON replies (who may call what: `access`; input checks: `inputs`)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway import appkeys
from gateway.errors import json_object
from gateway.http.body import read_body


def reply(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def json_body(request: web.Request) -> dict[str, Any]:
    return json_object(await read_body(request, request.app[appkeys.SETTINGS]))

