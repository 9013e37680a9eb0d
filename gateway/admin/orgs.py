"""Admin API: organizations and API keys (secrets are returned once, at creation)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from aiohttp import web

from gateway import appkeys
from gateway.admin import access, auditing
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
from gateway.auth.signing import derive_signing_key
from gateway.errors import InvalidRequest
from gateway.redis.bus import ChangeBus
from gateway.store.models import ApiKey
from gateway.store.validation import INT32_MAX

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
ORG_FIELDS = ("name", "rpm_limit", "tpm_limit")
KEY_FIELDS = ("org", "name", "expires_in", "rpm_limit", "tpm_limit", "models", "environment", "require_signature")
KEY_PATCH_FIELDS = ("name", "rpm_limit", "tpm_limit", "models", "environment", "expires_at")


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
    body = await json_body(request)
    only_fields(body, ORG_FIELDS)
    name = check_name(field(body, "name", str, required=True))
    limits = _limits(body)
    store = request.app[appkeys.STORE]
    org = await store.create_org(name, **limits)
    await auditing.record(request, "org.create", org.id, org_id=org.id, after=org)
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
    """Change an org's rpm/tpm limits; `null` removes a limit."""
    org_ref = path(request, "org")
    body = await json_body(request)
    only_fields(body, ORG_FIELDS[1:])
    if not body:
        raise InvalidRequest("Nothing to change: give rpm_limit and/or tpm_limit (null removes a limit).")
    limits = _limits(body)
    cleared = [name for name in ("rpm_limit", "tpm_limit") if name in body and body[name] is None]
    store = request.app[appkeys.STORE]
    before = await store.get_org(org_ref)
    access.check_org(request, before.id)
    org = await store.update_org(org_ref, **limits, clear=cleared)
    await auditing.record(request, "org.update", org.id, org_id=org.id, before=before, after=org)
    await announce_org(request, org.id, "org")
    return reply(org.to_dict())


async def delete_org(request: web.Request) -> web.Response:
    """Delete an organization that has no active keys, users, service accounts or budgets left (409 counts them)."""
    store = request.app[appkeys.STORE]
    org = await store.get_org(path(request, "org"))
    keys = await store.list_api_keys(org.id)  # their hashes: every replica drops what it cached of them
    await store.delete_org(org.id)
    await auditing.record(request, "org.delete", org.id, org_id=org.id, before=org)
    await request.app[appkeys.BUS].publish("org", {"org_id": org.id, "key_hashes": [k.key_hash for k in keys]})
    return reply({"deleted": org.id, "name": org.name})


async def announce_org(request: web.Request, org_id: str, kind: str) -> None:
    """Every replica drops cached keys of the org (limits or budgets changed)."""
    keys = await request.app[appkeys.STORE].list_api_keys(org_id)
    await request.app[appkeys.BUS].publish(kind, {"org_id": org_id, "key_hashes": [k.key_hash for k in keys]})


async def announce_key(bus: ChangeBus, key: ApiKey) -> None:
    """Every replica drops what it cached about this key's hash, including "unknown" after a miss."""
    await bus.publish("key", {"key_hashes": [key.key_hash]})


async def create_key(request: web.Request) -> web.Response:
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
    require_signature = field(body, "require_signature", bool, default=False)
    store = request.app[appkeys.STORE]
    org = await store.get_org(org_ref)
    access.check_org(request, org.id)
    secret, key_hash, prefix = generate_api_key()
    key = await store.create_api_key(
        org.id, name=name, key_hash=key_hash, prefix=prefix, **limits, allowed_models=models,
        environment=environment, expires_at=datetime.now(UTC) + lifetime if lifetime is not None else None,
        # Only a signing key's row holds something a store leak could sign with (docs/signed-requests.md).
        require_signature=require_signature, signing_key=derive_signing_key(secret) if require_signature else None,
    )
    await auditing.record(request, "key.create", key.id, org_id=org.id, after=key)
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
    store = request.app[appkeys.STORE]
    before = await store.get_api_key(path(request, "key_id"))
    access.check_org(request, before.org_id)
    key = await store.revoke_api_key(before.id)
    await auditing.record(request, "key.revoke", key.id, org_id=key.org_id, before=before, after=key)
    await announce_key(request.app[appkeys.BUS], key)
    return reply(key.to_dict())


def iso_time(value: str, param: str) -> datetime:
    """An ISO 8601 time with a timezone (`2026-01-31T00:00:00Z`), in UTC."""
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            raise ValueError("no timezone")
        return moment.astimezone(UTC)
    except (ValueError, OverflowError) as e:
        raise InvalidRequest(f"'{param}' must be an ISO 8601 time with a timezone, e.g. 2026-01-31T00:00:00Z.",
                             param=param) from e


def _key_changes(body: dict) -> dict:
    """The fields a PATCH names, as `update_api_key` changes: null clears a limit, the environment or the expiry."""
    changes: dict = {}
    if "name" in body:
        changes["name"] = check_name(field(body, "name", str, required=True))
    for limit in ("rpm_limit", "tpm_limit"):
        if limit in body:
            changes[limit] = field(body, limit, int, minimum=1, maximum=INT32_MAX)
    if "models" in body:
        if body["models"] is None:
            raise InvalidRequest("'models' must be a list of model names ([] allows every model).", param="models")
        changes["allowed_models"] = string_list(body, "models")
    if "environment" in body:
        environment = field(body, "environment", str)
        changes["environment"] = None if environment is None else check_name(environment, "environment")
    if "expires_at" in body:
        expires_at = field(body, "expires_at", str)
        changes["expires_at"] = None if expires_at is None else iso_time(expires_at, "expires_at")
    return changes


async def update_key(request: web.Request) -> web.Response:
    """Change a key's name, limits, models, environment or expiry in place (its secret stays); 409 if revoked."""
    store = request.app[appkeys.STORE]
    before = await store.get_api_key(path(request, "key_id"))
    access.check_org(request, before.org_id)
    body = await json_body(request)
    only_fields(body, KEY_PATCH_FIELDS)
    changes = _key_changes(body)
    if not changes:
        raise InvalidRequest(f"Nothing to change: give {', '.join(KEY_PATCH_FIELDS)}.")
    key = await store.update_api_key(before.id, **changes)
    await auditing.record(request, "key.update", key.id, org_id=key.org_id, before=before, after=key)
    await announce_key(request.app[appkeys.BUS], key)
    return reply(key.to_dict())


def setup(app: web.Application) -> None:
    r = app.router
    r.add_post("/admin/v1/organizations", create_org)
    r.add_get("/admin/v1/organizations", list_orgs)
    r.add_get("/admin/v1/organizations/{org}", get_org)
    r.add_patch("/admin/v1/organizations/{org}", update_org)
    r.add_delete("/admin/v1/organizations/{org}", delete_org)
    r.add_post("/admin/v1/api-keys", create_key)
    r.add_get("/admin/v1/api-keys", list_keys)
    r.add_get("/admin/v1/api-keys/{key_id}", get_key)
    r.add_post("/admin/v1/api-keys/{key_id}/revoke", revoke_key)
    r.add_delete("/admin/v1/api-keys/{key_id}", revoke_key)
    r.add_patch("/admin/v1/api-keys/{key_id}", update_key)
