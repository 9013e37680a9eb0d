"""Admin API: the model registry (models per environment, their endpoints and pricing).

Every change is written to the store, then announced on the change bus so all gateway
replicas update their routing snapshot within a second.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse

from aiohttp import web

from gateway import appkeys
from gateway.admin import auditing
from gateway.admin.common import json_body, reply
from gateway.admin.inputs import (
    MAX_URL,
    field,
    only_fields,
    path,
    query_str,
    shown,
    string_list,
)
from gateway.admin.orgs import check_model_name, check_name
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.store.models import ENDPOINT_STATUSES, MODEL_STATUSES, Endpoint, Model
from gateway.store.validation import INT32_MAX, MAX_PRICE

MAX_WEIGHT = 1_000_000
REGISTER_FIELDS = ("name", "environment", "endpoint", "input_price", "output_price", "max_tokens", "fallbacks",
                   "metadata", "weight", "release", "status", "mirror_percent")
MODEL_FIELDS = ("status", "input_price", "output_price", "max_tokens", "fallbacks", "metadata")
ENDPOINT_FIELDS = ("weight", "status", "release", "mirror_percent")


def check_url(url: str) -> str:
    try:
        parsed = urlparse(url)
        parsed.port  # noqa: B018 - raises ValueError for a port that is not a number in 0-65535
    except ValueError as e:
        raise InvalidRequest(f"'endpoint' must be an http(s) URL, got {shown(url)!r}.", param="endpoint") from e
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InvalidRequest(f"'endpoint' must be an http(s) URL, got {shown(url)!r}.", param="endpoint")
    return url.rstrip("/")


def _pricing(body: dict) -> dict:
    return {
        "input_price": field(body, "input_price", float, minimum=0, maximum=MAX_PRICE),
        "output_price": field(body, "output_price", float, minimum=0, maximum=MAX_PRICE),
        "max_tokens": field(body, "max_tokens", int, minimum=1, maximum=INT32_MAX),
    }


def _mirror_percent(body: dict) -> float | None:
    """The share (0..100) of live requests copied to the endpoint as shadow traffic; None = keep."""
    return field(body, "mirror_percent", float, minimum=0, maximum=100)


def _fallbacks(body: dict) -> tuple[str, ...] | None:
    return tuple(check_model_name(f, "fallbacks") for f in string_list(body, "fallbacks")) if "fallbacks" in body else None


async def announce(request: web.Request, name: str, environment: str) -> None:
    payload = await request.app[appkeys.REGISTRY].announce(name, environment)
    await request.app[appkeys.BUS].publish("registry", payload)


def _env(request: web.Request, body: dict | None = None) -> str:
    default = request.app[appkeys.SETTINGS].default_environment
    if body is not None:
        return check_name(field(body, "environment", str, default=default), "environment")
    return check_name(query_str(request, "env", default), "env")


async def list_models(request: web.Request) -> web.Response:
    env = query_str(request, "env")
    entries = await request.app[appkeys.STORE].registry(env)
    return reply([{**e.model.to_dict(), "endpoints": [ep.to_dict() for ep in e.endpoints]} for e in entries])


def audited_model(model: Model, endpoints: Iterable[Endpoint]) -> dict[str, Any]:
    """A model with its endpoints, as the audit log records it."""
    return {**model.to_dict(), "endpoints": [auditing.snapshot(e) for e in endpoints]}


async def register(request: web.Request) -> web.Response:
    """Create the model in the environment if needed, then add an endpoint to it (if given)."""
    body = await json_body(request)
    only_fields(body, REGISTER_FIELDS)
    store = request.app[appkeys.STORE]
    name = check_model_name(field(body, "name", str, required=True))
    env = _env(request, body)
    url = field(body, "endpoint", str, max_length=MAX_URL)
    url = check_url(url) if url else None
    pricing = _pricing(body)
    fallbacks = _fallbacks(body)
    metadata = field(body, "metadata", dict)
    weight = field(body, "weight", int, default=100, minimum=0, maximum=MAX_WEIGHT)
    release = check_name(field(body, "release", str, default="stable"), "release")
    status = field(body, "status", str, default="ready", choices=ENDPOINT_STATUSES)
    mirror = _mirror_percent(body)
    created = False
    before = None
    try:
        model = await store.get_model(name, env)
        before = audited_model(model, await store.list_endpoints(model.id))
        changes = {k: v for k, v in pricing.items() if v is not None}
        if fallbacks is not None:
            changes["fallbacks"] = fallbacks
        if metadata is not None:
            changes["metadata"] = metadata
        if changes:
            model = await store.update_model(name, env, **changes)
    except NotFound:
        model = await store.create_model(
            name, env, **{k: v for k, v in pricing.items() if v is not None},
            fallbacks=fallbacks or (), metadata=metadata or {})
        created = True
    endpoint = None
    if url:
        try:
            endpoint = await store.add_endpoint(model.id, url, release=release, weight=weight, status=status,
                                                mirror_percent=mirror or 0.0)
        except Conflict:
            if created:
                raise
            existing = [e for e in await store.list_endpoints(model.id) if e.url == url][0]
            endpoint = await store.update_endpoint(existing.id, weight=weight, release=release, status=status,
                                                   mirror_percent=mirror)
    entry = [e for e in await store.registry(env) if e.model.id == model.id][0]
    await auditing.record(request, "registry.register", model.id, before=before,
                          after=audited_model(entry.model, entry.endpoints))
    await announce(request, name, env)
    return reply({**entry.model.to_dict(), "endpoints": [ep.to_dict() for ep in entry.endpoints],
                  "endpoint": endpoint.to_dict() if endpoint else None}, status=201 if created else 200)


async def get_model(request: web.Request) -> web.Response:
    store = request.app[appkeys.STORE]
    env, name = path(request, "env"), path(request, "name")
    model = await store.get_model(name, env)
    endpoints = await store.list_endpoints(model.id)
    return reply({**model.to_dict(), "endpoints": [e.to_dict() for e in endpoints]})


async def update_model(request: web.Request) -> web.Response:
    env, name = path(request, "env"), path(request, "name")
    body = await json_body(request)
    only_fields(body, MODEL_FIELDS)
    changes = {"status": field(body, "status", str, choices=MODEL_STATUSES), **_pricing(body),
               "metadata": field(body, "metadata", dict), "fallbacks": _fallbacks(body)}
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        raise InvalidRequest("Nothing to change: give status, prices, max_tokens, fallbacks or metadata.")
    store = request.app[appkeys.STORE]
    before = await store.get_model(name, env)
    model = await store.update_model(name, env, **changes)
    await auditing.record(request, "registry.update", model.id, before=before, after=model)
    await announce(request, name, env)
    return reply(model.to_dict())


async def delete_model(request: web.Request) -> web.Response:
    env, name = path(request, "env"), path(request, "name")
    store = request.app[appkeys.STORE]
    model = await store.get_model(name, env)
    before = audited_model(model, await store.list_endpoints(model.id))
    await store.delete_model(name, env)
    await auditing.record(request, "registry.deregister", model.id, before=before)
    await announce(request, name, env)
    return reply({"deleted": model.id, "name": name, "environment": env})


async def list_endpoints(request: web.Request) -> web.Response:
    return reply([e.to_dict() for e in await request.app[appkeys.STORE].list_endpoints()])


async def update_endpoint(request: web.Request) -> web.Response:
    endpoint_id = path(request, "endpoint_id")
    body = await json_body(request)
    only_fields(body, ENDPOINT_FIELDS)
    weight = field(body, "weight", int, minimum=0, maximum=MAX_WEIGHT)
    status = field(body, "status", str, choices=ENDPOINT_STATUSES)
    release = field(body, "release", str)
    if release is not None:
        check_name(release, "release")
    mirror = _mirror_percent(body)
    if weight is None and status is None and release is None and mirror is None:
        raise InvalidRequest("Nothing to change: give weight, status, release or mirror_percent.")
    store = request.app[appkeys.STORE]
    before = await store.get_endpoint(endpoint_id)
    endpoint = await store.update_endpoint(endpoint_id, weight=weight, status=status, release=release,
                                           mirror_percent=mirror)
    model = await store.get_model_by_id(endpoint.model_id)
    await auditing.record(request, "endpoint.update", endpoint.id, before=before, after=endpoint)
    await announce(request, model.name, model.environment)
    return reply(endpoint.to_dict())


async def delete_endpoint(request: web.Request) -> web.Response:
    store = request.app[appkeys.STORE]
    endpoint = await store.get_endpoint(path(request, "endpoint_id"))
    model = await store.get_model_by_id(endpoint.model_id)
    await store.delete_endpoint(endpoint.id)
    await auditing.record(request, "endpoint.delete", endpoint.id, before=endpoint)
    await announce(request, model.name, model.environment)
    return reply({"deleted": endpoint.id})


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/v1/models", list_models)
    r.add_post("/admin/v1/models", register)
    r.add_get("/admin/v1/models/{env}/{name:.+}", get_model)
    r.add_patch("/admin/v1/models/{env}/{name:.+}", update_model)
    r.add_delete("/admin/v1/models/{env}/{name:.+}", delete_model)
    r.add_get("/admin/v1/endpoints", list_endpoints)
    r.add_patch("/admin/v1/endpoints/{endpoint_id}", update_endpoint)
    r.add_delete("/admin/v1/endpoints/{endpoint_id}", delete_endpoint)
