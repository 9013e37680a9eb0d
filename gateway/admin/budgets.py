"""Admin API: budgets per org (and per key), their live status, and rebuild from the lake.

Amounts travel as USD in the API and as integer micro-USD everywhere else.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import appkeys
from gateway.admin import access, auditing
from gateway.admin.common import json_body, reply
from gateway.admin.inputs import field, only_fields, path, query_str
from gateway.admin.orgs import announce_org
from gateway.errors import InvalidRequest, NotFound
from gateway.limits.base import PERIODS, BudgetRule
from gateway.store.models import Budget

MICROS = 1_000_000
# 1e15 micro-USD: exact in int64, in a Lua double (< 2**53) and with room for a period's spend on top.
MAX_USD = 1_000_000_000
BUDGET_FIELDS = ("org", "usd", "period", "soft_limit_pct", "key_id")


def budget_dict(budget: Budget) -> dict[str, Any]:
    return {**budget.to_dict(), "limit_usd": budget.limit_micros / MICROS}


async def set_budget(request: web.Request) -> web.Response:
    body = await json_body(request)
    only_fields(body, BUDGET_FIELDS)
    org_ref = field(body, "org", str, required=True)
    usd = field(body, "usd", float, required=True, minimum=0, maximum=MAX_USD)
    period = field(body, "period", str, required=True, choices=PERIODS)
    soft = field(body, "soft_limit_pct", int, default=80, minimum=0, maximum=100)
    key_id = field(body, "key_id", str)
    store = request.app[appkeys.STORE]
    org = await store.get_org(org_ref)
    access.check_org(request, org.id)
    if key_id is not None:
        key = await store.get_api_key(key_id)
        if key.org_id != org.id:
            raise InvalidRequest(f"key {key_id!r} does not belong to organization {org.name!r}.", param="key_id")
    before = next((b for b in await store.list_budgets(org.id) if b.key_id == key_id), None)
    budget = await store.set_budget(org.id, limit_micros=round(usd * MICROS), period=period,
                                    soft_limit_pct=soft, key_id=key_id)
    await auditing.record(request, "budget.set", budget.id, org_id=org.id,
                          before=budget_dict(before) if before else None, after=budget_dict(budget))
    await announce_org(request, org.id, "budget")
    return reply(budget_dict(budget))


async def list_budgets(request: web.Request) -> web.Response:
    store = request.app[appkeys.STORE]
    org_id = await access.list_filter(request, query_str(request, "org"))
    return reply([budget_dict(b) for b in await store.list_budgets(org_id)])


async def show_budget(request: web.Request) -> web.Response:
    """Limit, spent, reserved, remaining and reset time of each budget of the org."""
    store = request.app[appkeys.STORE]
    org = await store.get_org(path(request, "org"))
    access.check_org(request, org.id)
    limiter = request.app[appkeys.DATAPLANE].limiter
    out = []
    for budget in await store.list_budgets(org.id):
        status = await limiter.budget_status(BudgetRule.from_budget(budget))
        s = status.to_dict()
        out.append({**budget_dict(budget), **s, "org": org.name,
                    "spent_usd": status.spent_micros / MICROS, "reserved_usd": status.reserved_micros / MICROS,
                    "remaining_usd": status.remaining_micros / MICROS})
    if not out:
        raise NotFound(f"organization {org.name!r} has no budget.")
    return reply(out)


async def rebuild_budgets(request: web.Request) -> web.Response:
    """Recount each budget's current period from the usage lake: what was counted until now is
    replaced by the lake's figure (one grouped query), later settles add on top. Budgets restore
    themselves after a restart or a Redis data loss; this is for counters known to be wrong
    (e.g. after an outage under the fail-open policy)."""
    body = await json_body(request) if request.can_read_body else {}
    only_fields(body, ("org",))
    store = request.app[appkeys.STORE]
    org_name = field(body, "org", str)
    scope = await access.list_filter(request, org_name)  # an org admin rebuilds its own org's budgets
    org_ids = [scope] if scope is not None else None
    limiter = request.app[appkeys.DATAPLANE].limiter
    budgets = [b for b in await store.list_budgets() if org_ids is None or b.org_id in org_ids]
    rules = [BudgetRule.from_budget(b) for b in budgets]
    counted = {b.id: (await limiter.budget_status(r)).spent_micros for b, r in zip(budgets, rules, strict=True)}
    restored = {r.rule: r for r in await limiter.restore_budgets(rules, reset=True)}
    results = []
    for budget, rule in zip(budgets, rules, strict=True):
        status = await limiter.budget_status(rule)
        lake = restored[rule].lake_micros if rule in restored else None
        results.append({"budget_id": budget.id, "org_id": budget.org_id, "key_id": budget.key_id,
                        "period": budget.period, "lake_micros": lake, "spent_micros": status.spent_micros,
                        "spent_usd": status.spent_micros / MICROS})
    await auditing.record(request, "budget.rebuild", scope or "*", org_id=scope,
                          before={"spent_micros": counted},
                          after={"spent_micros": {r["budget_id"]: r["spent_micros"] for r in results},
                                 "lake_micros": {r["budget_id"]: r["lake_micros"] for r in results}})
    return reply(results)


async def delete_budget(request: web.Request) -> web.Response:
    """Delete a budget: every replica stops enforcing it at once (its cached key entries are dropped)."""
    store = request.app[appkeys.STORE]
    budget = await store.get_budget(path(request, "budget_id"))
    access.check_org(request, budget.org_id)
    await store.delete_budget(budget.id)
    await auditing.record(request, "budget.delete", budget.id, org_id=budget.org_id, before=budget_dict(budget))
    await announce_org(request, budget.org_id, "budget")
    return reply({"deleted": budget.id, "org_id": budget.org_id, "key_id": budget.key_id})


def setup(app: web.Application) -> None:
    r = app.router
    r.add_put("/admin/v1/budgets", set_budget)
    r.add_post("/admin/v1/budgets", set_budget)
    r.add_get("/admin/v1/budgets", list_budgets)
    r.add_post("/admin/v1/budgets/rebuild", rebuild_budgets)
    r.add_get("/admin/v1/budgets/{org}", show_budget)
    r.add_delete("/admin/v1/budgets/{budget_id}", delete_budget)
