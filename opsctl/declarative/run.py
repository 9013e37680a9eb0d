"""One apply from start to finish: read the gateway, plan, check the secrets policy, write, report.

Shared by `opsctl apply` and `opsctl reconcile` (which applies each new commit the same way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opsctl.client import AdminClient
from opsctl.declarative import state
from opsctl.declarative.apply import (
    Outcome,
    SecretSink,
    SecretsError,
    Source,
    apply_plan,
    creates_secrets,
    describe_refusal,
)
from opsctl.declarative.plan import Plan, kind_name, make_plan
from opsctl.declarative.schema import Config


@dataclass
class Result:
    """An apply's plan and, unless it was a dry run, what the apply did."""

    plan: Plan
    dry_run: bool
    source: Source | None = None
    outcome: Outcome | None = None  # None for a dry run
    shown_secrets: tuple[dict[str, Any], ...] = ()  # for the terminal: there was no --secrets-out

    @property
    def failed(self) -> bool:
        """A removal refused, or a write refused midway (exit 1)."""
        return self.outcome is not None and bool(self.outcome.refused or self.outcome.stopped)

    def errors(self) -> list[str]:
        if self.outcome is None:
            return []
        out = [describe_refusal(change, why) for change, why in self.outcome.refused]
        if self.outcome.stopped is not None:
            change, why = self.outcome.stopped
            made = len(self.outcome.done)
            out.append(f"apply stopped at {change.lines()[0]}: {why} ({made} of {len(self.plan.changes)} "
                       f"changes made; apply again once fixed)")
        return out

    def lines(self) -> list[str]:
        """The plan per object and field, notes, and one closing line."""
        out = [line for change in self.plan.ordered() for line in change.lines()]
        out += [f"  {note}" for note in self.plan.notes()]
        counts = self.plan.summary()
        if not self.plan.changes:
            out.append("no changes")
        elif self.dry_run:
            out.append(f"dry run: {counts['added']} to add, {counts['changed']} to change, "
                       f"{counts['removed']} to remove; nothing was changed")
        elif self.outcome is not None:
            done = self.outcome.summary()
            refused = f" ({len(self.outcome.refused)} refused)" if self.outcome.refused else ""
            out.append(f"applied: {done['added']} added, {done['changed']} changed, {done['removed']} removed"
                       f"{refused}")
        return out

    def secret_lines(self) -> list[str]:
        return [_secret_line(record) for record in self.shown_secrets]

    def to_dict(self) -> dict[str, Any]:
        out = {**self.plan.to_dict(), "dry_run": self.dry_run,
               "source": self.source.to_dict() if self.source else None,
               "result": self.outcome.to_dict() if self.outcome else None}
        if self.shown_secrets:
            out["secrets"] = list(self.shown_secrets)
        return out


def _secret_line(record: dict[str, Any]) -> str:
    if record["kind"] == "key":
        return f"key {record['name']}: {record['key']}"
    return (f"{kind_name(record['kind'])} {record['name']}: client_id {record['client_id']} "
            f"client_secret {record['client_secret']}")


def apply_config(client: AdminClient, config: Config, *, prune: bool = False, dry_run: bool = False,
                 secrets: SecretSink, terminal: bool, source: Source | None = None) -> Result:
    """Plan `config` against the gateway and, unless `dry_run`, apply it.

    `terminal`: the secrets of created objects may be shown on stdout (a person is reading it).

    Raises:
        ConfigInvalid: problems found against the gateway's state (nothing changed).
        SecretsError: the plan creates secrets but has nowhere safe to put them (nothing changed).
        FleetgateError: the gateway refused a read, or recording the ownership or the apply.
    """
    plan = make_plan(config, state.fetch(client), prune=prune)
    result = Result(plan, dry_run, source)
    if dry_run:
        return result
    with_secrets = creates_secrets(plan)
    if with_secrets and secrets.path is None and not terminal:
        named = ", ".join(f"{kind_name(c.kind)} {c.label}" for c in with_secrets[:5])
        raise SecretsError(f"this apply creates {len(with_secrets)} secret(s) ({named}) and stdout is not a "
                             "terminal: pass --secrets-out FILE (written 0600) so they stay out of logs; "
                             "nothing was changed")
    if with_secrets:
        secrets.open()
    try:
        result.outcome = apply_plan(client, plan, secrets, source)
    finally:
        secrets.close()
    result.shown_secrets = tuple(secrets.shown)
    return result
