"""Running real Fleetgate pieces inside a test: simulator pods and a gateway on free ports."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from aiohttp import web

from gateway import appkeys
from gateway.app import create_app
from gateway.http.server import GatewayRunner
from gateway.settings import Settings
from opsctl.sim import SimConfig, create_sim_app
from tests.support import free_port

ADMIN_TOKEN = "fg-admin-test-token"


@contextlib.asynccontextmanager
async def serve_app(app: web.Application, port: int | None = None) -> AsyncIterator[str]:
    port = port or free_port()
    # A gateway app is served exactly as in production (header deadline, connection cap, ...).
    runner = (GatewayRunner(app, app[appkeys.SETTINGS]) if appkeys.SETTINGS in app
              else web.AppRunner(app, handler_cancellation=True, access_log=None))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def sim_pod(model: str, **kwargs) -> AsyncIterator[str]:
    port = free_port()
    async with serve_app(create_sim_app(SimConfig(model=model, port=port, **kwargs)), port) as url:
        yield url


def gateway_settings(tmp_path: Path, **overrides) -> Settings:
    values = dict(state_dir=tmp_path / "state", admin_token=ADMIN_TOKEN, usage_sink="none",
                  health_interval_s=0.5, eject_cooldown_s=1.0)
    values.update(overrides)
    return Settings(**values)


@dataclass
class Gateway:
    url: str
    admin: httpx.AsyncClient
    app: web.Application

    async def create_org(self, name: str = "acme", **extra) -> dict:
        r = await self.admin.post("/admin/v1/organizations", json={"name": name, **extra})
        assert r.status_code == 201, r.text
        return r.json()

    async def create_key(self, org: str = "acme", **extra) -> dict:
        r = await self.admin.post("/admin/v1/api-keys", json={"org": org, **extra})
        assert r.status_code == 201, r.text
        return r.json()

    async def register(self, model: str, endpoint: str | None, **extra) -> dict:
        r = await self.admin.post("/admin/v1/models", json={"name": model, "endpoint": endpoint, **extra})
        assert r.status_code in (200, 201), r.text
        return r.json()


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings, **app_kwargs) -> AsyncIterator[Gateway]:
    app = create_app(settings, **app_kwargs)
    async with serve_app(app) as url:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                                     timeout=30) as admin:
            yield Gateway(url=url, admin=admin, app=app)
