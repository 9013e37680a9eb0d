"""The gateway's route table: every path it serves, in one place (handlers live with their concern)."""

from __future__ import annotations

from aiohttp import web

from gateway import appkeys
from gateway.admin import setup_admin
from gateway.http import status
from gateway.http.openapi import openapi


async def chat(request: web.Request) -> web.StreamResponse:
    return await request.app[appkeys.DATAPLANE].handle(request, "chat", "/v1/chat/completions")


async def completions(request: web.Request) -> web.StreamResponse:
    return await request.app[appkeys.DATAPLANE].handle(request, "completions", "/v1/completions")


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await request.app[appkeys.DATAPLANE].handle(request, "embeddings", "/v1/embeddings")


async def list_models(request: web.Request) -> web.Response:
    """OpenAI's model list: only the models this key may use, in its environment."""
    dataplane = request.app[appkeys.DATAPLANE]
    info = await dataplane.auth.authenticate(request.headers.get("Authorization"))
    env = info.key.environment or dataplane.settings.default_environment
    data = [
        {"id": r.model.name, "object": "model", "created": int(r.model.created_at.timestamp()),
         "owned_by": "fleetgate"}
        for r in dataplane.registry.routes(env)
        if r.model.status == "active" and info.may_use(r.model.name)
    ]
    data.sort(key=lambda m: m["id"])
    return web.json_response({"object": "list", "data": data})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/chat/completions", chat)
    r.add_post("/v1/inference", chat)
    r.add_post("/v1/completions", completions)
    r.add_post("/v1/embeddings", embeddings)
    r.add_get("/v1/models", list_models)
    r.add_get("/v1/status/healthz", status.healthz)
    r.add_get("/v1/status/readyz", status.readyz)
    r.add_get("/metrics", status.metrics)
    setup_admin(app)
    r.add_get("/openapi.json", openapi)
