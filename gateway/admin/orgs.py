"""Admin API: organizations and API keys (secrets are returned once, at creation)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from aiohttp import web

from gateway import appkeys
from gateway.admin.common import field, json_body, reply, require_admin, string_list
from gateway.auth.secrets import generate_api_key
from gateway.errors import InvalidRequest

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DURATION_RE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, *, param: str) -> timedelta:
    """'30d', '12h', '90m' → timedelta."""
    m = _DURATION_RE.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise InvalidRequest(f"'{param}' must be a duration like 30d, 12h or 90m.", param=param)
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


def check_name(value: str, param: str = "name") -> str:
    if not NAME_RE.match(value):
        raise InvalidRequest(f"'{param}' must be 1-64 characters of letters, digits, '.', '_' or '-'.", param=param)
    return value


async def create_org(request: web.Request) -> web.Response:
    actor = require_admin(request)
    body = await json_body(request)
    name = check_name(field(body, "name", str, required=True))
    rpm = field(body, "rpm_limit", int, minimum=1)
    tpm = field(body, "tpm_limit", int, minimum=1)
    store = request.app[appkeys.STORE]
    org = await store.create_org(name, rpm_limit=rpm, tpm_limit=tpm)
    await store.add_audit(actor, "org.create", org.id, {"name": name})
    return reply(org.to_dict(), status=201)


async def list_orgs(request: web.Request) -> web.Response:
    require_admin(request)
    return reply([o.to_dict() for o in await request.app[appkeys.STORE].list_orgs()])


async def get_org(request: web.Request) -> web.Response:
    require_admin(request)
    return reply((await request.app[appkeys.STORE].get_org(request.match_info["org"])).to_dict())


async def update_org(request: web.Request) -> web.Response:
    actor = require_admin(request)
    body = await json_body(request)
    store = request.app[appkeys.STORE]
    org = await store.update_org(request.match_info["org"], rpm_limit=field(body, "rpm_limit", int, minimum=1),
                                 tpm_limit=field(body, "tpm_limit", int, minimum=1))
    await store.add_audit(actor, "org.update", org.id, body)
    await announce_org(request, org.id, "org")
    return reply(org.to_dict())


async def announce_org(request: web.Request, org_id: str, kind: str) -> None:
    """Every replica drops cached keys of the org (limits or budgets changed)."""
    keys = await request.app[appkeys.STORE].list_api_keys(org_id)
    await request.app[appkeys.BUS].publish(kind, {"org_id": org_id, "key_hashes": [k.key_hash for k in keys]})


async def create_key(request: web.Request) -> web.Response:
    actor = require_admin(request)
    body = await json_body(request)
    store = request.app[appkeys.STORE]
    org = await store.get_org(field(body, "org", str, required=True))
    name = check_name(field(body, "name", str, default="default"))
    expires_in = field(body, "expires_in", str)
    expires_at = datetime.now(UTC) + parse_duration(expires_in, param="expires_in") if expires_in else None
    secret, key_hash, prefix = generate_api_key()
    key = await store.create_api_key(
        org.id, name=name, key_hash=key_hash, prefix=prefix,
        rpm_limit=field(body, "rpm_limit", int, minimum=1), tpm_limit=field(body, "tpm_limit", int, minimum=1),
        allowed_models=string_list(body, "models"), environment=field(body, "environment", str),
        expires_at=expires_at,
    )
    await store.add_audit(actor, "key.create", key.id, {"org": org.id, "name": name})
    return reply({**key.to_dict(), "key": secret}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    require_admin(request)
    store = request.app[appkeys.STORE]
    org = request.query.get("org")
    org_id = (await store.get_org(org)).id if org else None
    return reply([k.to_dict() for k in await store.list_api_keys(org_id)])


async def get_key(request: web.Request) -> web.Response:
    require_admin(request)
    return reply((await request.app[appkeys.STORE].get_api_key(request.match_info["key_id"])).to_dict())


async def revoke_key(request: web.Request) -> web.Response:
    actor = require_admin(request)
    store = request.app[appkeys.STORE]
    key = await store.revoke_api_key(request.match_info["key_id"])
    await store.add_audit(actor, "key.revoke", key.id, {})
    await request.app[appkeys.BUS].publish("key", {"key_hashes": [key.key_hash], "org_id": key.org_id})
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
