"""The gateway's route table: every path it serves, in one place (handlers live with their concern)."""

from __future__ import annotations

from aiohttp import web

from gateway import appkeys
from gateway.admin import setup_admin
from gateway.analytics import routes as analytics
from gateway.http import status
from gateway.http.openapi import openapi
from gateway.proxy.models import list_models, retrieve_model


async def chat(request: web.Request) -> web.StreamResponse:
    return await request.app[appkeys.DATAPLANE].handle(request, "chat", "/v1/chat/completions")


async def completions(request: web.Request) -> web.StreamResponse:
    return await request.app[appkeys.DATAPLANE].handle(request, "completions", "/v1/completions")


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await request.app[appkeys.DATAPLANE].handle(request, "embeddings", "/v1/embeddings")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/chat/completions", chat)
    r.add_post("/v1/inference", chat)
    r.add_post("/v1/completions", completions)
    r.add_post("/v1/embeddings", embeddings)
    r.add_get("/v1/models", list_models)
    r.add_get("/v1/models/{model:.+}", retrieve_model)
    r.add_get("/v1/status/healthz", status.healthz)
    r.add_get("/v1/status/readyz", status.readyz)
    r.add_get("/metrics", status.metrics)
    setup_admin(app)
    analytics.setup(app)
    r.add_get("/openapi.json", openapi)
