"""Carrying out a plan through the admin API, then recording what the config owns and that it was applied.

Writes go in dependency order and stop at the first refusal, except an org that `--prune` may not
delete yet (the gateway refuses while other objects remain): that is reported and the rest goes on.
Whatever happened, the ownership table then names every object the config made or declared, so
a second apply adopts nothing twice and `--prune` never reaches beyond it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import FleetgateError
from opsctl.state import PRIVATE_FILE
from opsctl.client import AdminClient, path_part
from opsctl.declarative.plan import Change, Plan, jsonable, kind_name
from opsctl.declarative.schema import Ident, label
from opsctl.declarative.state import OWNERSHIP_KINDS, OWNERSHIP_PATH, SERVICE_ACCOUNTS_PATH, USERS_PATH

APPLIED_PATH = "/admin/v1/config/applied"
CHANGE_SOURCE_HEADER = "X-Fleetgate-Change-Source"
SECRET_KINDS = ("key", "service_account")  # created with a secret the gateway shows once


@dataclass(frozen=True, slots=True)
class Source:
    """The git commit a config came from; the audit log records it with every write."""

    repo: str
    branch: str
    commit: str

    def header(self) -> str:
        return f"git:{self.repo}#{self.branch}@{self.commit}"

    def to_dict(self) -> dict[str, str]:
        return {"repo": self.repo, "branch": self.branch, "commit": self.commit}


def tag_writes(client: AdminClient, source: Source) -> None:
    """Send the change source with every later request, so each audit entry names the commit."""
    client.set_header(CHANGE_SOURCE_HEADER, source.header())


class SecretsError(FleetgateError):
    """No safe place for the secrets of new keys or service accounts (nothing was changed)."""

    status = 400
    code = "secrets_out_required"


def creates_secrets(plan: Plan) -> list[Change]:
    return [c for c in plan.changes if c.op == "add" and c.kind in SECRET_KINDS]


class SecretSink:
    """Where the secrets of created keys and service accounts go: appended as JSON lines to a 0600 file,
    else kept to be shown once on the terminal. Never to a log: without a file or a terminal, `apply`
    refuses to create them (see `opsctl.commands.config`)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.shown: list[dict[str, Any]] = []
        self._fd: int | None = None

    def open(self) -> None:
        """Open (create 0600) the file before the first write, so a bad path fails while nothing changed.

        Raises:
            SecretsError: the file cannot be opened for appending.
        """
        if self.path is None or self._fd is not None:
            return
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, PRIVATE_FILE)
            os.fchmod(self._fd, PRIVATE_FILE)  # an existing, wider file is tightened before a secret lands in it
        except OSError as e:
            self.close()
            raise SecretsError(f"cannot write --secrets-out {self.path}: {e.strerror}; nothing was changed") from e

    def keep(self, record: dict[str, Any]) -> None:
        if self._fd is None:
            self.shown.append(record)
            return
        os.write(self._fd, (json.dumps(record) + "\n").encode())
        os.fsync(self._fd)  # written before the next change: a later failure must not lose it

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class Outcome:
    """What an apply did: the changes made, ids of created objects, removals the gateway refused,
    and where it stopped (a refused write ends the apply)."""

    done: list[Change] = field(default_factory=list)
    created: dict[tuple[str, Ident], str] = field(default_factory=dict)
    refused: list[tuple[Change, str]] = field(default_factory=list)
    stopped: tuple[Change, str] | None = None
    ownership_changed: bool = False

    def summary(self) -> dict[str, int]:
        return {op: sum(1 for c in self.done if c.op == key)
                for op, key in (("added", "add"), ("changed", "change"), ("removed", "remove"))}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"applied": self.summary(), "ownership_changed": self.ownership_changed,
                               "refused": [{"kind": c.kind, "name": c.label, "reason": why} for c, why in self.refused]}
        if self.stopped is not None:
            change, why = self.stopped
            out["stopped"] = {"op": change.op, "kind": change.kind, "name": change.label, "reason": why}
        return out


class _Writer:
    """One request (or two) per change, through the ordinary admin routes."""

    def __init__(self, client: AdminClient, plan: Plan, secrets: SecretSink, outcome: Outcome) -> None:
        self.client, self.plan, self.secrets, self.outcome = client, plan, secrets, outcome

    def id_of(self, kind: str, ident: Ident) -> str:
        existing = self.plan.matched.get((kind, ident))
        return existing.id if existing is not None and existing.id else self.outcome.created[(kind, ident)]

    def write(self, change: Change) -> None:
        handler: Callable[[Change], str | None] = getattr(self, f"_{change.op}_{change.kind}")
        created = handler(change)
        if created is not None:
            self.outcome.created[(change.kind, change.ident)] = created

    # orgs
    def _add_org(self, c: Change) -> str:
        return self.client.post("/admin/v1/organizations", {"name": c.ident[0], **_want(c)})["id"]

    def _change_org(self, c: Change) -> None:
        self.client.patch(f"/admin/v1/organizations/{_have_id(c)}", _changed(c))

    def _remove_org(self, c: Change) -> None:
        self.client.delete(f"/admin/v1/organizations/{_have_id(c)}")

    # users and service accounts: removing one disables it (its history stays attributable)
    def _principal_body(self, c: Change) -> dict[str, Any]:
        body = _changed(c)
        if "disabled" in body:
            body["status"] = "disabled" if body.pop("disabled") else "active"
        return body

    def _add_principal(self, path: str, c: Change) -> dict[str, Any]:
        want = _want(c)
        body = {"name": c.ident[0], "role": want["role"], "org": want["org"]}
        if "email" in want:
            body["email"] = want["email"]
        created = self.client.post(path, {k: v for k, v in body.items() if v is not None})
        if want["disabled"]:
            self.client.patch(f"{path}/{path_part(created['id'])}", {"status": "disabled"})
        return created

    def _add_user(self, c: Change) -> str:
        return self._add_principal(USERS_PATH, c)["id"]

    def _change_user(self, c: Change) -> None:
        self.client.patch(f"{USERS_PATH}/{_have_id(c)}", self._principal_body(c))

    def _remove_user(self, c: Change) -> None:
        self.client.patch(f"{USERS_PATH}/{_have_id(c)}", {"status": "disabled"})

    def _add_service_account(self, c: Change) -> str:
        created = self._add_principal(SERVICE_ACCOUNTS_PATH, c)
        self.secrets.keep({"kind": "service_account", "name": c.label, "id": created["id"],
                           "client_id": created["client_id"], "client_secret": created["client_secret"]})
        return created["id"]

    def _change_service_account(self, c: Change) -> None:
        self.client.patch(f"{SERVICE_ACCOUNTS_PATH}/{_have_id(c)}", self._principal_body(c))

    def _remove_service_account(self, c: Change) -> None:
        self.client.patch(f"{SERVICE_ACCOUNTS_PATH}/{_have_id(c)}", {"status": "disabled"})

    # api keys
    def _add_key(self, c: Change) -> str:
        want = _want(c)
        body = {"org": c.ident[0], "name": c.ident[1], "rpm_limit": want["rpm_limit"],
                "tpm_limit": want["tpm_limit"], "models": want["models"] or None, "environment": want["environment"]}
        if want["require_signature"]:
            body["require_signature"] = True
        created = self.client.post("/admin/v1/api-keys", body)
        self.secrets.keep({"kind": "key", "name": c.label, "id": created["id"], "key": created["key"]})
        if want["expires_at"] is not None:
            self.client.patch(f"/admin/v1/api-keys/{path_part(created['id'])}", {"expires_at": want["expires_at"]})
        return created["id"]

    def _change_key(self, c: Change) -> None:
        self.client.patch(f"/admin/v1/api-keys/{_have_id(c)}", _changed(c))

    def _remove_key(self, c: Change) -> None:
        self.client.post(f"/admin/v1/api-keys/{_have_id(c)}/revoke")

    # budgets: one per org, or per key of it; setting one replaces it
    def _set_budget(self, c: Change) -> str:
        org, key = c.ident
        want = _want(c)
        body = {"org": org, "usd": want["usd"], "period": want["period"], "soft_limit_pct": want["soft_limit_pct"],
                "key_id": None if key is None else self.id_of("key", (org, key))}
        return self.client.put("/admin/v1/budgets", body)["id"]

    def _add_budget(self, c: Change) -> str:
        return self._set_budget(c)

    def _change_budget(self, c: Change) -> None:
        self._set_budget(c)

    def _remove_budget(self, c: Change) -> None:
        self.client.delete(f"/admin/v1/budgets/{_have_id(c)}")

    # registry
    def _add_model(self, c: Change) -> str:
        env, name = c.ident
        want = _want(c)
        created = self.client.post("/admin/v1/models", {
            "name": name, "environment": env, "input_price": want["input_price"],
            "output_price": want["output_price"], "max_tokens": want["max_tokens"], "fallbacks": want["fallbacks"]})
        if want["status"] != "active":
            self.client.patch(_model_path(env, name), {"status": want["status"]})
        return created["id"]

    def _change_model(self, c: Change) -> None:
        self.client.patch(_model_path(*c.ident), _changed(c))

    def _remove_model(self, c: Change) -> None:
        self.client.delete(_model_path(*c.ident))

    def _add_endpoint(self, c: Change) -> str:
        env, name, url = c.ident
        created = self.client.post("/admin/v1/models", {"name": name, "environment": env, "endpoint": url, **_want(c)})
        return created["endpoint"]["id"]

    def _change_endpoint(self, c: Change) -> None:
        self.client.patch(f"/admin/v1/endpoints/{_have_id(c)}", _changed(c))

    def _remove_endpoint(self, c: Change) -> None:
        self.client.delete(f"/admin/v1/endpoints/{_have_id(c)}")


def _want(change: Change) -> dict[str, Any]:
    assert change.want is not None
    return {k: jsonable(v) for k, v in change.want.fields.items()}


def _changed(change: Change) -> dict[str, Any]:
    return {f.name: jsonable(f.new) for f in change.fields}


def _have_id(change: Change) -> str:
    assert change.object_id is not None  # a change or removal of an object the gateway has
    return path_part(change.object_id)


def _model_path(env: str | None, name: str | None) -> str:
    assert env is not None and name is not None
    return f"/admin/v1/models/{path_part(env)}/{path_part(name)}"


def _refusable(change: Change, error: FleetgateError) -> bool:
    """An org --prune cannot delete yet (other objects remain): reported, and the apply goes on."""
    return change.op == "remove" and change.kind == "org" and error.status == 409


def owned_after(plan: Plan, outcome: Outcome) -> dict[tuple[str, str], str]:
    """(kind, id) → name of every object the config owns once this apply is over."""
    existing = list(plan.matched.values()) + plan.kept + [item for item, _ in plan.blocked]
    owned = {(item.kind, item.id): item.label for item in existing if item.id is not None}
    owned.update({(kind, object_id): label(kind, ident) for (kind, ident), object_id in outcome.created.items()})
    removed = {(c.kind, c.object_id) for c in outcome.done if c.op == "remove"}
    for change in plan.changes:  # removals refused or never reached stay owned
        if change.op == "remove" and change.object_id and (change.kind, change.object_id) not in removed:
            owned[(change.kind, change.object_id)] = change.label
    return owned


def record_ownership(client: AdminClient, plan: Plan, outcome: Outcome) -> None:
    """Replace the config's owned set on the gateway, when it differs from what it was."""
    owned = owned_after(plan, outcome)
    before = {key: row.name for key, row in plan.owned_before.items()}
    if owned == before:
        return
    objects = [{"kind": OWNERSHIP_KINDS[kind], "object_id": object_id, "name": name}
               for (kind, object_id), name in sorted(owned.items())]
    client.put(OWNERSHIP_PATH, {"owner": plan.owner, "objects": objects})
    outcome.ownership_changed = True


def apply_plan(client: AdminClient, plan: Plan, secrets: SecretSink, source: Source | None = None) -> Outcome:
    """Make every change of `plan`, record ownership, and (unless a write was refused midway) record the apply.

    Raises:
        FleetgateError: the gateway refused recording ownership or the apply (the changes are made).
        OSError: the secrets file could not be written.
    """
    outcome = Outcome()
    writer = _Writer(client, plan, secrets, outcome)
    for change in plan.ordered():
        try:
            writer.write(change)
        except FleetgateError as e:
            if _refusable(change, e):
                outcome.refused.append((change, e.message))
                continue
            outcome.stopped = (change, e.message)
            break
        except OSError as e:  # the secrets file: the object exists, its secret could not be kept
            outcome.stopped = (change, f"cannot write the secrets file {secrets.path}: {e.strerror}")
            break
        outcome.done.append(change)
    record_ownership(client, plan, outcome)
    if outcome.stopped is None:
        client.post(APPLIED_PATH, {"owner": plan.owner, "source": source.to_dict() if source else None,
                                   "dry_run": False, "summary": outcome.summary()})
    return outcome


def describe_refusal(change: Change, why: str) -> str:
    return f"{kind_name(change.kind)} {change.label} was not removed: {why}"
