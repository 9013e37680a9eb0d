"""Recording admin changes in the audit log: who (the caller), what, on which target, before and after."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import appkeys
from gateway.admin import access


async def record(request: web.Request, action: str, target: str, *, org_id: str | None = None,
                 before: dict[str, Any] | None = None, after: dict[str, Any] | None = None) -> None:
    """Record one admin mutation, made by the request's caller. `before`/`after` never hold secrets."""
    detail = {"before": before, "after": after, "org_id": org_id}
    await request.app[appkeys.STORE].add_audit(access.actor(request), action, target, detail)
