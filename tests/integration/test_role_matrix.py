"""The role matrix: every admin route × every kind of caller → the expected status, generated from the access table.

The callers are real: users with personal tokens of each role (global), an operator of another org, an
expired token, a revoked token, no token. The expectation comes from the rule of each route in
`gateway.admin.access.RULES`, so a route added without a rule (or a rule without a route) fails here.
Requests that are allowed are sent with a probe field or an unknown id, so they reach the handler (which
answers 2xx, 400 or 404, never 401/403) without changing what the next case sees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx
import pytest

from gateway.admin.access import PROTECTED_PREFIXES, PUBLIC_ROUTES, RULES, Rule
from gateway.app import create_app
from gateway.auth.principal import ROLE_RANK
from tests.fleet import gateway_settings, running_gateway
from tests.support import eventually

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
PARAM = re.compile(r"\{([^}]+)\}")
# Routes where a caller acts on itself: a user manages its own personal tokens whatever its role.
SELF_SERVICE = {
    ("POST", "/admin/v1/users/{user}/tokens"),
    ("GET", "/admin/v1/users/{user}/tokens"),
    ("DELETE", "/admin/v1/users/{user}/tokens/{token_id}"),
}
# Bodies that pass validation, for the cases that must reach the org check (another org's operator).
VALID_BODIES: dict[tuple[str, str], dict] = {
    ("POST", "/admin/v1/api-keys"): {"org": "acme", "name": "probe"},
    ("PATCH", "/admin/v1/api-keys/{key_id}"): {"rpm_limit": 5},
    ("POST", "/admin/v1/users/{user}/tokens"): {},
}


def admin_routes() -> set[tuple[str, str]]:
    """Every admin and analytics route but the public ones (probes, signed download links)."""
    app = create_app(gateway_settings(__import__("pathlib").Path("/nonexistent")))
    return {(r.method, r.resource.canonical) for r in app.router.routes()
            if r.resource is not None and r.resource.canonical.startswith(PROTECTED_PREFIXES) and r.method != "HEAD"
            } - PUBLIC_ROUTES


def test_every_admin_route_has_exactly_one_rule():
    routes = admin_routes()
    assert sorted(routes - RULES.keys()) == [], "admin routes without an access rule (add them to RULES)"
    assert sorted(RULES.keys() - routes) == [], "access rules for routes that do not exist"
    for key, rule in RULES.items():
        assert rule.role in ROLE_RANK and rule.scope in ("global", "org", "any"), key


# The role model, written independently of RULES so a wrong rule fails here: viewers read; operators
# change the registry, releases, rollouts and API keys (of their org); admins everything, incl. orgs, users,
# service accounts, budgets, signing keys and the declarative config's records.
WRITE_ROLE = {"organizations": "admin", "users": "admin", "service-accounts": "admin", "budgets": "admin",
              "oauth2": "admin", "config": "admin", "api-keys": "operator", "models": "operator",
              "endpoints": "operator", "releases": "operator", "rollouts": "operator", "usage": "operator",
              "exports": "viewer"}  # an analytics export is a read of what the caller may already read
ADMIN_ONLY_READS = {"service-accounts", "config"}  # client ids and what each config owns
# Objects that belong to one org: an org principal may act on its own. The rest is fleet-wide.
ORG_FAMILIES = {"organizations", "users", "service-accounts", "budgets", "api-keys", "audit", "usage",
                "reliability", "exports"}
GLOBAL_ONLY = {("POST", "/admin/v1/organizations"), ("DELETE", "/admin/v1/organizations/{org}"),
               ("POST", "/admin/v1/usage/flush"), ("GET", "/admin/v1/events")}


def test_rules_follow_the_role_model():
    wrong = []
    for (method, route), rule in sorted(RULES.items()):
        family = route.split("/")[3]
        if (method, route) in SELF_SERVICE:
            want_role = "viewer"
        elif method in MUTATING:
            want_role = WRITE_ROLE[family]
        else:
            want_role = "admin" if family in ADMIN_ONLY_READS else "viewer"
        if (method, route) in GLOBAL_ONLY or family == "config":
            scopes = {"global"}
        elif family in ORG_FAMILIES:
            scopes = {"org"}
        else:
            scopes = {"global"} if method in MUTATING else {"any"}
        if rule.role != want_role or rule.scope not in scopes:
            wrong.append(f"{method} {route}: {rule.role}/{rule.scope}, the role model says {want_role}/{scopes}")
    assert not wrong, "\n".join(wrong)


@dataclass(frozen=True)
class Caller:
    name: str
    token: str | None
    role: str | None = None  # None: not authenticated (expect 401)
    org: str | None = None  # None: global


def expected(method: str, route: str, rule: Rule, caller: Caller, *, names_acme: bool) -> str:
    """'401', '403' or 'allowed' (the handler runs: anything but 401/403).

    `names_acme`: the request points at an object of org acme (the callers' org is never acme)."""
    if caller.role is None:
        return "401"
    if (method, route) in SELF_SERVICE:
        return "allowed" if ROLE_RANK[caller.role] >= ROLE_RANK["admin"] and caller.org is None else "403"
    if ROLE_RANK[caller.role] < ROLE_RANK[rule.role]:
        return "403"
    if rule.scope == "global" and caller.org is not None:
        return "403"
    if rule.scope == "org" and caller.org is not None and names_acme:
        return "403"
    return "allowed"


class Fleet:
    """Real objects of org acme that every path parameter points at."""

    def __init__(self, gw) -> None:
        self.gw = gw
        self.values: dict[str, str] = {}

    async def build(self) -> None:
        admin = self.gw.admin
        await self.gw.create_org("acme")
        await self.gw.create_org("other")
        key = await self.gw.create_key("acme", name="k1")
        r = await admin.put("/admin/v1/budgets", json={"org": "acme", "usd": 100, "period": "monthly"})
        assert r.status_code == 200, r.text
        budget_id = r.json()["id"]
        model = await self.gw.register("m1", "http://127.0.0.1:9/v1")
        endpoints = (await admin.get("/admin/v1/endpoints")).json()
        r = await admin.post("/admin/v1/users", json={"name": "acme-viewer", "role": "viewer", "org": "acme"})
        assert r.status_code == 201, r.text
        user_id = r.json()["id"]
        token = await self.token(user_id)
        export = await admin.post("/analytics/v1/exports", json={"org": "acme", "month": "2026-01"})
        assert export.status_code == 202, export.text
        r = await admin.post("/admin/v1/service-accounts", json={"name": "acme-ci", "role": "operator", "org": "acme"})
        assert r.status_code == 201, r.text
        self.values = {
            "org": "acme", "key_id": key["id"], "budget_id": budget_id, "env": model.get("environment", "production"),
            "name": "m1", "endpoint_id": endpoints[0]["id"], "revision": "1", "rollout_id": "ro_0000000000000000",
            "kind": "spend", "user": user_id, "token_id": token["id"], "sa": r.json()["id"],
            "job_id": export.json()["id"],
        }

    async def token(self, user: str, **body) -> dict:
        r = await self.gw.admin.post(f"/admin/v1/users/{user}/tokens", json=body)
        assert r.status_code == 201, r.text
        return r.json()

    async def caller(self, name: str, role: str, org: str | None = None) -> tuple[Caller, str]:
        body = {"name": name, "role": role} | ({"org": org} if org else {})
        r = await self.gw.admin.post("/admin/v1/users", json=body)
        assert r.status_code == 201, r.text
        user_id = r.json()["id"]
        return Caller(name, (await self.token(user_id))["token"], role, org), user_id

    def path(self, route: str, *, missing: bool = False) -> str:
        """The route with acme's objects, or unknown ids (`missing`) so a mutation finds nothing to change."""
        def value(match: re.Match) -> str:
            name = match.group(1)
            if missing and name not in ("env", "kind"):
                return "nope-0000"
            return self.values[name]

        return PARAM.sub(value, route)


async def _send(client: httpx.AsyncClient, method: str, path: str, token: str | None, body: dict | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kwargs = {"json": body} if body is not None else {}
    if method == "GET" and path.endswith("/events"):
        async with client.stream("GET", path, headers=headers) as r:
            return r.status_code
    r = await client.request(method, path, headers=headers, **kwargs)
    return r.status_code


async def test_role_matrix(tmp_path):
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        fleet = Fleet(gw)
        await fleet.build()
        callers = [
            (await fleet.caller("g-viewer", "viewer"))[0],
            (await fleet.caller("g-operator", "operator"))[0],
            (await fleet.caller("g-admin", "admin"))[0],
            (await fleet.caller("o-operator", "operator", org="other"))[0],
            Caller("no-token", None),
        ]
        _, expiring_user = await fleet.caller("expiring", "admin")
        expired = await fleet.token(expiring_user, expires_in="1s")
        _, revoked_user = await fleet.caller("revoked", "admin")
        revoked = await fleet.token(revoked_user)
        r = await gw.admin.delete(f"/admin/v1/users/{revoked_user}/tokens/{revoked['id']}")
        assert r.status_code in (200, 204), r.text

        async def expired_refused():
            r = await gw.admin.get("/admin/v1/whoami", headers={"Authorization": f"Bearer {expired['token']}"})
            return r.status_code == 401

        await eventually(expired_refused, timeout=10, what="the 1 s token to expire")
        callers += [Caller("expired", expired["token"]), Caller("revoked", revoked["token"])]

        mismatches: list[str] = []
        cases = 0
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            for (method, route), rule in sorted(RULES.items()):
                for caller in callers:
                    mutating = method in MUTATING
                    names_acme = bool(PARAM.search(route)) and route != "/admin/v1/usage/{kind}" and not mutating
                    want = expected(method, route, rule, caller, names_acme=names_acme)
                    if want == "allowed" and mutating:
                        # Reach the handler without changing anything: an unknown target or an unknown field.
                        has_params = bool(PARAM.search(route))
                        path = fleet.path(route, missing=has_params)
                        body = {"probe_field": 1} if method != "DELETE" and not has_params else None
                        if method in ("POST", "PUT", "PATCH") and has_params:
                            body = {"probe_field": 1}
                    else:
                        path = fleet.path(route)
                        body = VALID_BODIES.get((method, route), {"probe_field": 1}) if mutating else None
                    status = await _send(client, method, path, caller.token, body)
                    cases += 1
                    got = str(status) if status in (401, 403) else "allowed"
                    if got != want or status >= 500:
                        mismatches.append(f"{caller.name:11} {method:6} {route}: expected {want}, got {status}")
        assert not mismatches, f"{len(mismatches)} of {cases} cases differ:\n" + "\n".join(mismatches)
        assert cases == len(RULES) * len(callers)


async def test_other_orgs_operator_is_refused_on_acme_objects(tmp_path):
    """Org scope: an operator of `other` names acme's objects → 403, and its lists hold none of acme's."""
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        fleet = Fleet(gw)
        await fleet.build()
        outsider, _ = await fleet.caller("o-operator", "operator", org="other")
        insider, _ = await fleet.caller("a-operator", "operator", org="acme")
        async with httpx.AsyncClient(base_url=gw.url, timeout=30,
                                     headers={"Authorization": f"Bearer {outsider.token}"}) as client:
            for method, route in sorted(RULES):
                rule = RULES[(method, route)]
                if rule.scope != "org" or not PARAM.search(route) or ROLE_RANK[rule.role] > ROLE_RANK["operator"]:
                    continue
                if route == "/admin/v1/usage/{kind}":
                    continue  # names no org in its path: the caller's own org is used
                body = VALID_BODIES.get((method, route), {}) if method in MUTATING else None
                r = await client.request(method, fleet.path(route), **({"json": body} if body is not None else {}))
                assert r.status_code == 403, (method, route, r.text)
                assert r.json()["error"]["code"] in ("org_scope_denied", "insufficient_role"), r.text
            r = await client.post("/admin/v1/api-keys", json={"org": "acme", "name": "sneaky"})
            assert r.status_code == 403 and r.json()["error"]["code"] == "org_scope_denied", r.text
            keys = (await client.get("/admin/v1/api-keys")).json()
            assert keys == [], "an operator of another org must see none of acme's keys"
            assert [o["name"] for o in (await client.get("/admin/v1/organizations")).json()] == ["other"]
            assert (await client.get("/admin/v1/api-keys", params={"org": "acme"})).status_code == 403
        # The same routes work for acme's own operator.
        async with httpx.AsyncClient(base_url=gw.url, timeout=30,
                                     headers={"Authorization": f"Bearer {insider.token}"}) as client:
            r = await client.post("/admin/v1/api-keys", json={"org": "acme", "name": "own"})
            assert r.status_code == 201, r.text
            assert {k["name"] for k in (await client.get("/admin/v1/api-keys")).json()} == {"k1", "own"}
            r = await client.post("/admin/v1/models", json={"name": "m2", "endpoint": "http://127.0.0.1:9/v1"})
            assert r.status_code == 403 and r.json()["error"]["code"] == "org_scope_denied", r.text


@pytest.mark.parametrize("header", ["", "Bearer", "Basic abc", "Bearer fgp_nope", "Bearer a.b.c",
                                    "Bearer " + "x" * 5000])
async def test_bad_admin_credentials_are_401(tmp_path, header):
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            r = await client.get("/admin/v1/organizations", headers={"Authorization": header} if header else {})
        assert r.status_code == 401, r.text
        error = r.json()["error"]
        assert error["code"] == "invalid_admin_token" and "x" * 50 not in error["message"]


def test_the_docs_route_table_is_the_access_table():
    from tests.support import repo_root

    text = (repo_root() / "docs" / "access-control.md").read_text()
    rows = set(re.findall(r"^\| (GET|POST|PUT|PATCH|DELETE) \| `([^`]+)` \| (\w+) \| (\w+)", text, re.MULTILINE))
    assert rows == {(m, r, rule.role, rule.scope) for (m, r), rule in RULES.items()}
