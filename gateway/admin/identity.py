"""Admin API: (being written for issue 12)."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    pass
