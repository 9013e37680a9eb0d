"""What the gateway has today, read through the admin API into the same `Item`s a config declares.

Values are normalized exactly as the config's are (sorted model lists, UTC times, whole micro-USD),
so a plan compares like with like. Revoked keys and budgets of revoked keys are history, not state.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.errors import FleetgateError
from opsctl.client import AdminClient
from opsctl.declarative.schema import KINDS, MICROS, Ident, Item

# The kinds as the ownership API names them.
OWNERSHIP_KINDS = {"org": "org", "user": "user", "service_account": "service_account", "key": "api_key",
                   "budget": "budget", "model": "model", "endpoint": "endpoint"}
KIND_OF_OWNERSHIP = {v: k for k, v in OWNERSHIP_KINDS.items()}
OWNERSHIP_PATH = "/admin/v1/config/ownership"
USERS_PATH = "/admin/v1/users"
SERVICE_ACCOUNTS_PATH = "/admin/v1/service-accounts"


@dataclass(frozen=True, slots=True)
class Owned:
    """One row of the ownership table: `owner` owns object `id` of `kind` (our kind names)."""

    kind: str
    id: str
    name: str
    owner: str


@dataclass
class State:
    """The gateway's objects by kind and identity (a list: two active keys of one org may share a
    name), every object by id, and who owns what."""

    items: dict[str, dict[Ident, list[Item]]] = field(
        default_factory=lambda: {kind: defaultdict(list) for kind in KINDS})
    owners: dict[tuple[str, str], Owned] = field(default_factory=dict)  # (kind, id) → row
    unsupported: set[str] = field(default_factory=set)  # kinds this gateway has no admin API for

    def add(self, item: Item) -> None:
        self.items[item.kind][item.ident].append(item)

    def all(self, kind: str) -> list[Item]:
        return [item for found in self.items[kind].values() for item in found]

    def owned_by(self, owner: str) -> dict[tuple[str, str], Owned]:
        return {key: row for key, row in self.owners.items() if row.owner == owner}

    def exists(self, kind: str, ident: Ident) -> bool:
        return bool(self.items[kind].get(ident))


def utc_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).astimezone(UTC)


def _optional_list(state: State, kind: str, client: AdminClient, path: str) -> list[dict[str, Any]]:
    """A list route that a gateway without that feature does not have: [] on 404, noted in `unsupported`."""
    try:
        return client.get(path)
    except FleetgateError as e:
        if e.status == 404:
            state.unsupported.add(kind)
            return []
        raise


def _principals(state: State, kind: str, rows: list[dict[str, Any]], org_names: dict[str, str]) -> None:
    for row in rows:
        org = org_names.get(row["org_id"]) if row.get("org_id") else None
        fields = {"role": row["role"], "org": org, "disabled": row["status"] == "disabled"}
        if kind == "user":
            fields["email"] = row.get("email")
        state.add(Item(kind, (row["name"],), fields, id=row["id"]))


def _keys(state: State, rows: list[dict[str, Any]], org_names: dict[str, str]) -> dict[str, str]:
    """Add the active keys; return key id → name of them (budgets name their key)."""
    names = {}
    for row in rows:
        if row["status"] != "active":
            continue
        names[row["id"]] = row["name"]
        state.add(Item("key", (org_names[row["org_id"]], row["name"]), {
            "rpm_limit": row["rpm_limit"], "tpm_limit": row["tpm_limit"],
            "models": tuple(sorted(row["allowed_models"])), "environment": row["environment"],
            "require_signature": bool(row.get("require_signature", False)),
            "expires_at": utc_time(row["expires_at"]),
        }, id=row["id"]))
    return names


def _budgets(state: State, rows: list[dict[str, Any]], org_names: dict[str, str], key_names: dict[str, str]) -> None:
    for row in rows:
        if row["key_id"] is not None and row["key_id"] not in key_names:
            continue  # the budget of a revoked key
        key = key_names[row["key_id"]] if row["key_id"] else None
        state.add(Item("budget", (org_names[row["org_id"]], key), {
            "period": row["period"], "usd": row["limit_micros"] / MICROS, "soft_limit_pct": row["soft_limit_pct"],
        }, id=row["id"]))


def _registry(state: State, models: list[dict[str, Any]]) -> None:
    for model in models:
        env, name = model["environment"], model["name"]
        state.add(Item("model", (env, name), {
            "input_price": float(model["input_price"]), "output_price": float(model["output_price"]),
            "max_tokens": model["max_tokens"], "fallbacks": tuple(model["fallbacks"]), "status": model["status"],
        }, id=model["id"]))
        for endpoint in model["endpoints"]:
            # "unhealthy" is the health checker's verdict on a "ready" endpoint, not a setting.
            status = "ready" if endpoint["status"] == "unhealthy" else endpoint["status"]
            state.add(Item("endpoint", (env, name, endpoint["url"]), {
                "release": endpoint["release"], "weight": endpoint["weight"], "status": status,
            }, id=endpoint["id"]))


def fetch(client: AdminClient) -> State:
    """Everything a config can declare, as the gateway has it now, and the whole ownership table.

    Raises:
        FleetgateError: the gateway refused a read (e.g. a token without the global admin role).
    """
    state = State()
    orgs = client.get("/admin/v1/organizations")
    org_names = {org["id"]: org["name"] for org in orgs}
    for org in orgs:
        state.add(Item("org", (org["name"],), {"rpm_limit": org["rpm_limit"], "tpm_limit": org["tpm_limit"]},
                       id=org["id"]))
    _principals(state, "user", _optional_list(state, "user", client, USERS_PATH), org_names)
    _principals(state, "service_account",
                _optional_list(state, "service_account", client, SERVICE_ACCOUNTS_PATH), org_names)
    key_names = _keys(state, client.get("/admin/v1/api-keys"), org_names)
    _budgets(state, client.get("/admin/v1/budgets"), org_names, key_names)
    _registry(state, client.get("/admin/v1/models"))
    for row in client.get(OWNERSHIP_PATH):
        kind = KIND_OF_OWNERSHIP[row["kind"]]
        state.owners[(kind, row["object_id"])] = Owned(kind, row["object_id"], row["name"], row["owner"])
    return state
