"""Admin API: organizations and API keys (secrets are returned once, at creation)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from aiohttp import web

from gateway import appkeys
from gateway.admin import access
from gateway.admin.common import json_body, reply
from gateway.admin.inputs import (
    duration,
    field,
    only_fields,
    path,
    query_str,
    string_list,
)
from gateway.auth.secrets import generate_api_key
from gateway.errors import InvalidRequest
from gateway.redis.bus import ChangeBus
from gateway.store.models import ApiKey
from gateway.store.validation import INT32_MAX

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
ORG_FIELDS = ("name", "rpm_limit", "tpm_limit")
KEY_FIELDS = ("org", "name", "expires_in", "rpm_limit", "tpm_limit", "models", "environment")


# Model names as vLLM serves them: Hugging Face ids ("org/model") and tags ("model:7b") included.
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._:-]|/(?!/)){0,127}(?<!/)", re.ASCII)


def check_model_name(value: str, param: str = "name") -> str:
    if not MODEL_NAME_RE.fullmatch(value):
        raise InvalidRequest(f"'{param}' must be 1-128 characters of letters, digits, '.', '_', '-', ':' or single "
                             "'/' (as in 'org/model'), starting with a letter or digit.", param=param)
    return value


def check_name(value: str, param: str = "name") -> str:
    if not NAME_RE.fullmatch(value):
        raise InvalidRequest(f"'{param}' must be 1-64 characters of letters, digits, '.', '_' or '-'.", param=param)
    return value


def _limits(body: dict) -> dict[str, int | None]:
    return {name: field(body, name, int, minimum=1, maximum=INT32_MAX) for name in ("rpm_limit", "tpm_limit")}


async def create_org(request: web.Request) -> web.Response:
    actor = access.actor(request)
    body = await json_body(request)
    only_fields(body, ORG_FIELDS)
    name = check_name(field(body, "name", str, required=True))
    limits = _limits(body)
    store = request.app[appkeys.STORE]
    org = await store.create_org(name, **limits)
    await store.add_audit(actor, "org.create", org.id, {"name": name})
    return reply(org.to_dict(), status=201)


async def list_orgs(request: web.Request) -> web.Response:
    scope = access.org_scope(request)
    orgs = await request.app[appkeys.STORE].list_orgs()
    return reply([o.to_dict() for o in orgs if scope is None or o.id == scope])


async def get_org(request: web.Request) -> web.Response:
    org = await request.app[appkeys.STORE].get_org(path(request, "org"))
    access.check_org(request, org.id)
    return reply(org.to_dict())


async def update_org(request: web.Request) -> web.Response:
    actor = access.actor(request)
    org_ref = path(request, "org")
    body = await json_body(request)
    only_fields(body, ORG_FIELDS[1:])
    limits = _limits(body)
    store = request.app[appkeys.STORE]
    access.check_org(request, (await store.get_org(org_ref)).id)
    org = await store.update_org(org_ref, **limits)
    await store.add_audit(actor, "org.update", org.id, {k: v for k, v in limits.items() if v is not None})
    await announce_org(request, org.id, "org")
    return reply(org.to_dict())


async def announce_org(request: web.Request, org_id: str, kind: str) -> None:
    """Every replica drops cached keys of the org (limits or budgets changed)."""
    keys = await request.app[appkeys.STORE].list_api_keys(org_id)
    await request.app[appkeys.BUS].publish(kind, {"org_id": org_id, "key_hashes": [k.key_hash for k in keys]})


async def announce_key(bus: ChangeBus, key: ApiKey) -> None:
    """Every replica drops what it cached about this key's hash, including "unknown" after a miss."""
    await bus.publish("key", {"key_hashes": [key.key_hash]})


async def create_key(request: web.Request) -> web.Response:
    actor = access.actor(request)
    body = await json_body(request)
    only_fields(body, KEY_FIELDS)
    org_ref = field(body, "org", str, required=True)
    name = check_name(field(body, "name", str, default="default"))
    expires_in = field(body, "expires_in", str)
    lifetime = duration(expires_in, "expires_in") if expires_in is not None else None
    limits = _limits(body)
    models = string_list(body, "models")
    environment = field(body, "environment", str)
    if environment is not None:
        check_name(environment, "environment")
    store = request.app[appkeys.STORE]
    org = await store.get_org(org_ref)
    access.check_org(request, org.id)
    secret, key_hash, prefix = generate_api_key()
    key = await store.create_api_key(
        org.id, name=name, key_hash=key_hash, prefix=prefix, **limits, allowed_models=models,
        environment=environment, expires_at=datetime.now(UTC) + lifetime if lifetime is not None else None,
    )
    await store.add_audit(actor, "key.create", key.id, {"org": org.id, "name": name})
    await announce_key(request.app[appkeys.BUS], key)
    return reply({**key.to_dict(), "key": secret}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    store = request.app[appkeys.STORE]
    org_id = await access.list_filter(request, query_str(request, "org"))
    return reply([k.to_dict() for k in await store.list_api_keys(org_id)])


async def get_key(request: web.Request) -> web.Response:
    key = await request.app[appkeys.STORE].get_api_key(path(request, "key_id"))
    access.check_org(request, key.org_id)
    return reply(key.to_dict())


async def revoke_key(request: web.Request) -> web.Response:
    actor = access.actor(request)
    store = request.app[appkeys.STORE]
    key_id = path(request, "key_id")
    access.check_org(request, (await store.get_api_key(key_id)).org_id)
    key = await store.revoke_api_key(key_id)
    await store.add_audit(actor, "key.revoke", key.id, {})
    await announce_key(request.app[appkeys.BUS], key)
    return reply(key.to_dict())


def setup(app: web.Application) -> None:
    r = app.router
    r.add_post("/admin/v1/organizations", create_org)
    r.add_get("/admin/v1/organizations", list_orgs)
    r.add_get("/admin/v1/organizations/{org}", get_org)
    r.add_patch("/admin/v1/organizations/{org}", update_org)
    r.add_post("/admin/v1/api-keys", create_key)
    r.add_get("/admin/v1/api-keys", list_keys)
    r.add_get("/admin/v1/api-keys/{key_id}", get_key)
    r.add_post("/admin/v1/api-keys/{key_id}/revoke", revoke_key)
    r.add_delete("/admin/v1/api-keys/{key_id}", revoke_key)
