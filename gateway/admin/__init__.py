"""The admin API (`/admin/v1/...`): control-plane CRUD for opsctl and the TUI."""

from __future__ import annotations

from aiohttp import web

from gateway.admin import (
    access,
    analysis,
    audit,
    budgets,
    config,
    events,
    fleet,
    health,
    identity,
    orgs,
    registry,
    releases,
    rollouts,
    usage,
)


def setup_admin(app: web.Application) -> None:
    for module in (access, identity, orgs, registry, budgets, audit, usage, releases, rollouts, events, analysis, fleet,
                   health, config):
        module.setup(app)
