"""Admin API: the audit log of every control-plane change."""

from __future__ import annotations

from aiohttp import web

from gateway import appkeys
from gateway.admin.common import reply
from gateway.admin.inputs import query_int


async def list_audit(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 100, maximum=10_000)
    entries = await request.app[appkeys.STORE].list_audit(limit=limit)
    return reply([e.to_dict() for e in entries])


def setup(app: web.Application) -> None:
    app.router.add_get("/admin/v1/audit", list_audit)
