"""Admin API: fleet (being written)."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Registers no route yet."""
