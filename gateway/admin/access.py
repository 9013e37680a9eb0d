"""Who may call which admin or analytics route: one table of (method, route) → required role and org scope.

Every route under `/admin/` and `/analytics/` must have a rule here (or be one of the few PUBLIC_ROUTES):
the middleware refuses a route without one (fail closed), and tests/integration/test_role_matrix.py walks
the whole table with real tokens of every role, so a new route without a rule fails the suite.

Scopes:
- `global`: only a global principal (no org) may call it: fleet-wide changes (registry, rollouts).
- `org`: an org principal may call it for its own org's objects; the handler names the target org
  with `check_org`, and list handlers filter with `org_scope`.
- `any`: any principal with the role, whatever its org: fleet-wide reads (registry, fleet view).

`api_keys=True` lets an inference API key read the route as a viewer of its own org (usage reports,
the analytics API).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway import appkeys
from gateway.admin.auditing import SOURCE_HEADER, change_source
from gateway.auth.principal import Principal
from gateway.errors import PermissionDenied

SCOPES = ("global", "org", "any")
PROTECTED_PREFIXES = ("/admin/", "/analytics/")


@dataclass(frozen=True, slots=True)
class Rule:
    role: str  # viewer | operator | admin
    scope: str  # global | org | any
    api_keys: bool = False


def _r(role: str, scope: str, api_keys: bool = False) -> Rule:
    return Rule(role, scope, api_keys)


# (method, route as registered) → rule. HEAD follows GET.
RULES: dict[tuple[str, str], Rule] = {
    # organizations
    ("POST", "/admin/v1/organizations"): _r("admin", "global"),
    ("GET", "/admin/v1/organizations"): _r("viewer", "org"),
    ("GET", "/admin/v1/organizations/{org}"): _r("viewer", "org"),
    ("PATCH", "/admin/v1/organizations/{org}"): _r("admin", "org"),
    # api keys
    ("POST", "/admin/v1/api-keys"): _r("operator", "org"),
    ("GET", "/admin/v1/api-keys"): _r("viewer", "org"),
    ("GET", "/admin/v1/api-keys/{key_id}"): _r("viewer", "org"),
    ("POST", "/admin/v1/api-keys/{key_id}/revoke"): _r("operator", "org"),
    ("DELETE", "/admin/v1/api-keys/{key_id}"): _r("operator", "org"),
    # budgets
    ("PUT", "/admin/v1/budgets"): _r("admin", "org"),
    ("POST", "/admin/v1/budgets"): _r("admin", "org"),
    ("GET", "/admin/v1/budgets"): _r("viewer", "org"),
    ("POST", "/admin/v1/budgets/rebuild"): _r("admin", "org"),
    ("GET", "/admin/v1/budgets/{org}"): _r("viewer", "org"),
    # registry (fleet-wide: any viewer reads, global operators change)
    ("GET", "/admin/v1/models"): _r("viewer", "any"),
    ("POST", "/admin/v1/models"): _r("operator", "global"),
    ("GET", "/admin/v1/models/{env}/{name}"): _r("viewer", "any"),
    ("PATCH", "/admin/v1/models/{env}/{name}"): _r("operator", "global"),
    ("DELETE", "/admin/v1/models/{env}/{name}"): _r("operator", "global"),
    ("GET", "/admin/v1/endpoints"): _r("viewer", "any"),
    ("PATCH", "/admin/v1/endpoints/{endpoint_id}"): _r("operator", "global"),
    ("DELETE", "/admin/v1/endpoints/{endpoint_id}"): _r("operator", "global"),
    ("GET", "/admin/v1/endpoints/{endpoint_id}/health"): _r("viewer", "any"),
    ("POST", "/admin/v1/endpoints/{endpoint_id}/smoke"): _r("operator", "global"),
    # releases and rollouts
    ("GET", "/admin/v1/releases"): _r("viewer", "any"),
    ("GET", "/admin/v1/releases/{name}"): _r("viewer", "any"),
    ("DELETE", "/admin/v1/releases/{name}"): _r("operator", "global"),
    ("POST", "/admin/v1/releases/{name}/revisions"): _r("operator", "global"),
    ("PATCH", "/admin/v1/releases/{name}/revisions/{revision}"): _r("operator", "global"),
    ("GET", "/admin/v1/rollouts"): _r("viewer", "any"),
    ("POST", "/admin/v1/rollouts"): _r("operator", "global"),
    ("GET", "/admin/v1/rollouts/{rollout_id}"): _r("viewer", "any"),
    ("PATCH", "/admin/v1/rollouts/{rollout_id}"): _r("operator", "global"),
    ("POST", "/admin/v1/rollouts/{rollout_id}/events"): _r("operator", "global"),
    ("GET", "/admin/v1/analysis"): _r("viewer", "any"),
    # live views
    ("GET", "/admin/v1/fleet"): _r("viewer", "any"),
    ("GET", "/admin/v1/events"): _r("viewer", "global"),  # budget events name every org
    # usage (an API key reads its own org's)
    ("GET", "/admin/v1/usage/{kind}"): _r("viewer", "org", api_keys=True),
    ("POST", "/admin/v1/usage/flush"): _r("operator", "global"),
    # audit (an org principal sees its org's entries)
    ("GET", "/admin/v1/audit"): _r("viewer", "org"),
    ("GET", "/admin/v1/audit/export"): _r("viewer", "org"),  # audit (issue 12, part D)
    # who am I
    ("GET", "/admin/v1/whoami"): _r("viewer", "any"),
    # identity (A): users, personal tokens (the handler also lets a user manage its own), service accounts, keys
    ("POST", "/admin/v1/users"): _r("admin", "org"),
    ("GET", "/admin/v1/users"): _r("viewer", "org"),
    ("GET", "/admin/v1/users/{user}"): _r("viewer", "org"),
    ("PATCH", "/admin/v1/users/{user}"): _r("admin", "org"),
    ("POST", "/admin/v1/users/{user}/tokens"): _r("viewer", "org"),
    ("GET", "/admin/v1/users/{user}/tokens"): _r("viewer", "org"),
    ("DELETE", "/admin/v1/users/{user}/tokens/{token_id}"): _r("viewer", "org"),
    ("POST", "/admin/v1/service-accounts"): _r("admin", "org"),
    ("GET", "/admin/v1/service-accounts"): _r("admin", "org"),
    ("GET", "/admin/v1/service-accounts/{sa}"): _r("admin", "org"),
    ("PATCH", "/admin/v1/service-accounts/{sa}"): _r("admin", "org"),
    ("POST", "/admin/v1/service-accounts/{sa}/secret"): _r("admin", "org"),
    ("GET", "/admin/v1/oauth2/keys"): _r("viewer", "any"),
    ("POST", "/admin/v1/oauth2/keys/rotate"): _r("admin", "global"),
    # declarative config (E2): ownership, apply records, and the CRUD apply/prune needs
    ("GET", "/admin/v1/config/ownership"): _r("admin", "global"),
    ("PUT", "/admin/v1/config/ownership"): _r("admin", "global"),
    ("POST", "/admin/v1/config/applied"): _r("admin", "global"),
    ("PATCH", "/admin/v1/api-keys/{key_id}"): _r("operator", "org"),
    ("DELETE", "/admin/v1/budgets/{budget_id}"): _r("admin", "org"),
    ("DELETE", "/admin/v1/organizations/{org}"): _r("admin", "global"),
    # analytics API (issue 13): org-scoped like the usage reports; an API key reads and exports its own org's
    ("GET", "/analytics/v1/usage"): _r("viewer", "org", api_keys=True),
    ("GET", "/analytics/v1/reliability"): _r("viewer", "org", api_keys=True),
    ("POST", "/analytics/v1/exports"): _r("viewer", "org", api_keys=True),  # an export is a read, audited
    ("GET", "/analytics/v1/exports"): _r("viewer", "org", api_keys=True),
    ("GET", "/analytics/v1/exports/{job_id}"): _r("viewer", "org", api_keys=True),
    ("GET", "/analytics/v1/exports/{job_id}/download"): _r("viewer", "org", api_keys=True),
}
# Routes under the protected prefixes that need no credential: probes, and signed download links (the
# signature in the URL is the credential; gateway/analytics/presign.py).
PUBLIC_ROUTES: frozenset[tuple[str, str]] = frozenset({
    ("GET", "/analytics/v1/status/healthz"),
    ("GET", "/analytics/v1/status/readyz"),
    ("GET", "/analytics/v1/exports/{job_id}/file"),
})


def rule_for(method: str, route: str) -> Rule | None:
    return RULES.get(("GET" if method == "HEAD" else method, route))


def is_public(method: str, route: str) -> bool:
    return ("GET" if method == "HEAD" else method, route) in PUBLIC_ROUTES


def principal(request: web.Request) -> Principal:
    """The authenticated caller (set by `access_middleware` before any admin handler runs)."""
    return request[appkeys.PRINCIPAL]


def org_scope(request: web.Request) -> str | None:
    """The org a list must be limited to: the caller's org, or None for a global caller (every org)."""
    return principal(request).org_id


def check_org(request: web.Request, org_id: str | None) -> None:
    """403 unless the caller may act on objects of `org_id` (None: a global object, for global callers only)."""
    who = principal(request)
    if not who.may_act_on_org(org_id):
        raise PermissionDenied(f"{who.actor} belongs to another org: it may only act on its own org's objects.",
                               code="org_scope_denied")


async def list_filter(request: web.Request, org_ref: str | None) -> str | None:
    """The org id a list is limited to: the `?org=` asked for (checked against the caller's scope),
    else the caller's own org, else None (every org, for a global caller)."""
    who = principal(request)
    if org_ref:
        org_id = (await request.app[appkeys.STORE].get_org(org_ref)).id
        check_org(request, org_id)
        return org_id
    return who.org_id


def check_rule(who: Principal, rule: Rule) -> None:
    if not who.has_role(rule.role):
        raise PermissionDenied(f"This needs the {rule.role} role; {who.actor} has {who.role}.",
                               code="insufficient_role")
    if rule.scope == "global" and not who.is_global:
        raise PermissionDenied(f"This changes the whole fleet and needs a global {rule.role}; "
                               f"{who.actor} is scoped to one org.", code="org_scope_denied")


def admin_route(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    if resource is None:
        return None
    route = resource.canonical
    return route if route.startswith(PROTECTED_PREFIXES) else None


async def whoami(request: web.Request) -> web.Response:
    """The caller as the admin API sees it: kind, name, role, org (the TUI turns read-only for a viewer)."""
    from gateway.admin.common import reply

    return reply(principal(request).to_dict())


def setup(app: web.Application) -> None:
    app.router.add_get("/admin/v1/whoami", whoami)


@web.middleware
async def access_middleware(request: web.Request, handler):  # noqa: ANN001, ANN201 - aiohttp signature
    """Authenticate and authorize every admin and analytics route, and check its change-source header; other
    paths pass straight through (one prefix test on the inference path)."""
    if not request.path.startswith(PROTECTED_PREFIXES):
        return await handler(request)
    route = admin_route(request)
    if route is None or is_public(request.method, route):  # the router's 404 / 405, or a public route
        return await handler(request)
    rule = rule_for(request.method, route)
    if rule is None:
        raise PermissionDenied("This route has no access rule, so nobody may call it.", code="no_access_rule")
    header = request.headers.get("Authorization", "")
    if rule.api_keys and header.partition(" ")[2].strip().startswith("sk-"):
        info = await request.app[appkeys.AUTH].authenticate(header)
        who = Principal(kind="api_key", id=info.key.id, name=info.key.id, role="viewer", org_id=info.org.id)
    else:
        who = await request.app[appkeys.ADMIN_AUTH].authenticate(header)
    check_rule(who, rule)
    if SOURCE_HEADER in request.headers:
        change_source(request)  # a bad one is refused before the handler changes anything; auditing records it
    request[appkeys.PRINCIPAL] = who
    return await handler(request)
