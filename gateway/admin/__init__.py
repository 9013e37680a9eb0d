"""The admin API (`/admin/v1/...`): control-plane CRUD for opsctl and the TUI."""

from __future__ import annotations

from aiohttp import web

from gateway.admin import analysis, audit, budgets, events, fleet, health, orgs, registry, releases, rollouts, usage


def setup_admin(app: web.Application) -> None:
    for module in (orgs, registry, budgets, audit, usage, releases, rollouts, events, analysis, fleet, health):
        module.setup(app)
