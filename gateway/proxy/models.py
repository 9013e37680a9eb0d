"""OpenAI's model endpoints: the models an API key may use, in its environment, from the registry snapshot."""

from __future__ import annotations

from aiohttp import web

from gateway import appkeys
from gateway.auth.authenticator import KeyInfo
from gateway.errors import NotFound
from gateway.routing.registry import Route


def _model_object(route: Route) -> dict:
    return {"id": route.model.name, "object": "model", "created": int(route.model.created_at.timestamp()),
            "owned_by": "fleetgate"}


async def _visible(request: web.Request) -> tuple[KeyInfo, list[Route]]:
    dataplane = request.app[appkeys.DATAPLANE]
    info, _ = await dataplane.authenticate(request)  # a bearer key or a signed request
    env = info.key.environment or dataplane.settings.default_environment
    routes = [r for r in dataplane.registry.routes(env) if r.model.status == "active" and info.may_use(r.model.name)]
    return info, routes


async def list_models(request: web.Request) -> web.Response:
    """OpenAI's model list: only the models this key may use, in its environment."""
    _, routes = await _visible(request)
    data = sorted((_model_object(r) for r in routes), key=lambda m: m["id"])
    return web.json_response({"object": "list", "data": data})


async def retrieve_model(request: web.Request) -> web.Response:
    """One model (the SDK's `models.retrieve`), if this key may use it; names may contain '/'."""
    name = request.match_info["model"]
    _, routes = await _visible(request)
    for route in routes:
        if route.model.name == name:
            return web.json_response(_model_object(route))
    raise NotFound(f"The model '{name}' does not exist or is not available to this key.",
                   code="model_not_found", param="model")
