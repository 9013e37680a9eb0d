"""Comparing a config with the gateway: what to add, change and remove, per object and per field.

The whole plan is computed, and every problem found (a dangling reference, a field the admin API
cannot change in place, an object another config owns), before the first write: a config either
applies as a whole or changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opsctl.common import decimal_text
from opsctl.declarative.schema import KINDS, Config, Ident, Item, label
from opsctl.declarative.source import ConfigInvalid, Problem
from opsctl.declarative.state import Owned, State

SYMBOLS = {"add": "+", "change": "~", "remove": "-"}
KIND_NAMES = {"service_account": "service-account"}  # as the CLI spells it
# Fields set at creation only: the admin API has no way to change them on an existing object.
FIXED_FIELDS = {
    "key": {"require_signature": "a key's require_signature is set when it is created: declare a new key "
                                 "(another name) and prune this one"},
    "user": {"org": "a user cannot move to another org: declare a new user"},
    "service_account": {"org": "a service account cannot move to another org: declare a new one"},
}
# Whose removal is a state change (disable) rather than a deletion; an already disabled one is gone.
DISABLED_WHEN_REMOVED = ("user", "service_account")


def kind_name(kind: str) -> str:
    return KIND_NAMES.get(kind, kind)


def shown(value: Any) -> str:
    """A field value as a plan prints it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, float):
        return decimal_text(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


@dataclass(frozen=True, slots=True)
class FieldChange:
    name: str
    old: Any
    new: Any


@dataclass(frozen=True, slots=True)
class Change:
    """One object to add (`want`), change (`want` and `have`, with `fields`) or remove (`have`)."""

    op: str  # add | change | remove
    kind: str
    ident: Ident
    fields: tuple[FieldChange, ...] = ()
    want: Item | None = None
    have: Item | None = None

    @property
    def label(self) -> str:
        return label(self.kind, self.ident)

    @property
    def object_id(self) -> str | None:
        """The gateway's id of the object (None for one still to be added)."""
        return self.have.id if self.have is not None else None

    def lines(self) -> list[str]:
        head = f"{SYMBOLS[self.op]} {kind_name(self.kind)} {self.label}"
        if self.op != "change":
            return [head]
        return [f"{head}: {f.name} {shown(f.old)} → {shown(f.new)}" for f in self.fields]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "kind": self.kind, "name": self.label, "id": self.object_id}
        if self.op == "add" and self.want is not None:
            out["fields"] = {k: {"to": jsonable(v)} for k, v in self.want.fields.items()}
        elif self.op == "change":
            out["fields"] = {f.name: {"from": jsonable(f.old), "to": jsonable(f.new)} for f in self.fields}
        return out


@dataclass
class Plan:
    """What applying a config does, and which existing objects it then owns.

    `matched`: existing objects the config declares (kept as they are or changed); `adopted`: those
    of them no config owned yet; `kept`: owned objects no longer declared, left alone without
    --prune; `blocked`: owned objects --prune may not remove, with the reason.
    """

    owner: str
    changes: list[Change] = field(default_factory=list)
    matched: dict[tuple[str, Ident], Item] = field(default_factory=dict)
    adopted: list[Item] = field(default_factory=list)
    kept: list[Item] = field(default_factory=list)
    blocked: list[tuple[Item, str]] = field(default_factory=list)
    owned_before: dict[tuple[str, str], Owned] = field(default_factory=dict)

    def count(self, op: str) -> int:
        return sum(1 for c in self.changes if c.op == op)

    def summary(self) -> dict[str, int]:
        return {"added": self.count("add"), "changed": self.count("change"), "removed": self.count("remove")}

    def ordered(self) -> list[Change]:
        """Adds and changes in dependency order (orgs first), then removals in reverse (endpoints first)."""
        rank = {kind: i for i, kind in enumerate(KINDS)}
        ups = sorted((c for c in self.changes if c.op != "remove"), key=lambda c: rank[c.kind])
        downs = sorted((c for c in self.changes if c.op == "remove"), key=lambda c: -rank[c.kind])
        return ups + downs

    def notes(self) -> list[str]:
        out = [f"adopt {kind_name(i.kind)} {i.label} (exists; now owned by {self.owner!r})" for i in self.adopted]
        out += [f"keep {kind_name(i.kind)} {i.label}: owned but no longer declared (apply --prune removes it)"
                for i in self.kept]
        out += [f"cannot remove {kind_name(i.kind)} {i.label}: {why}" for i, why in self.blocked]
        return out

    def to_dict(self) -> dict[str, Any]:
        def ref(item: Item) -> dict[str, Any]:
            return {"kind": item.kind, "name": item.label, "id": item.id}

        return {"owner": self.owner, "changes": [c.to_dict() for c in self.ordered()],
                "adopted": [ref(i) for i in self.adopted], "kept": [ref(i) for i in self.kept],
                "blocked": [{**ref(i), "reason": why} for i, why in self.blocked], "summary": self.summary()}


class _Planner:
    def __init__(self, config: Config, state: State, prune: bool) -> None:
        self.config, self.state, self.prune = config, state, prune
        self.mine = state.owned_by(config.owner)
        self.plan = Plan(config.owner, owned_before=self.mine)
        self.problems: list[Problem] = []
        self.pruned: set[tuple[str, Ident]] = set()

    def run(self) -> Plan:
        for kind in KINDS:
            declared = self.config.items[kind]
            if declared and kind in self.state.unsupported:
                first = next(iter(declared.values()))
                assert first.origin is not None
                self.problems.append(first.origin.problem(None, f"this gateway has no admin API for "
                                                                f"{kind_name(kind)}s (is it older than the config?)"))
                continue
            matched = {self._declared(want) for want in declared.values()} - {None}
            self._undeclared(kind, matched)
        self._check_references()
        if self.problems:
            raise ConfigInvalid(self.problems)
        return self.plan

    def _declared(self, want: Item) -> str | None:
        """Plan one declared object; return the id of the existing object it is (None: to be created)."""
        have = self._match(want)
        if have is None:
            self.plan.changes.append(Change("add", want.kind, want.ident, want=want))
            return None
        self.plan.matched[(want.kind, want.ident)] = have
        owner = self.state.owners.get((have.kind, have.id or ""))
        if owner is None:
            self.plan.adopted.append(have)
        elif owner.owner != self.config.owner:
            self._problem(want, None, f"{kind_name(want.kind)} {want.label!r} is owned by the config "
                                      f"{owner.owner!r}: one object, one owner")
        diffs = tuple(FieldChange(name, have.fields.get(name), value) for name, value in want.fields.items()
                      if have.fields.get(name) != value)
        for diff in diffs:
            self._check_changeable(want, diff)
        if diffs:
            self.plan.changes.append(Change("change", want.kind, want.ident, diffs, want=want, have=have))
        return have.id

    def _match(self, want: Item) -> Item | None:
        candidates = self.state.items[want.kind].get(want.ident, [])
        owned = [c for c in candidates if (c.kind, c.id) in self.mine]
        if owned or len(candidates) <= 1:
            return (owned or candidates or [None])[0]
        self._problem(want, None, f"{len(candidates)} active {kind_name(want.kind)}s are named {want.label!r} and "
                                  "none is owned by this config: revoke all but one (opsctl key revoke ID)")
        return None

    def _check_changeable(self, want: Item, diff: FieldChange) -> None:
        why = FIXED_FIELDS.get(want.kind, {}).get(diff.name)
        if why:
            self._problem(want, diff.name, f"{shown(diff.old)} → {shown(diff.new)}: {why}")

    def _undeclared(self, kind: str, matched: set[str | None]) -> None:
        """Owned objects of `kind` the config no longer declares: removed with --prune, else kept."""
        for have in self.state.all(kind):
            if (kind, have.id) not in self.mine or have.id in matched:
                continue
            if not self.prune:
                self.plan.kept.append(have)
            elif kind in DISABLED_WHEN_REMOVED and have.fields["disabled"]:
                continue  # already as removed as it gets: it just leaves the owned set
            elif (why := self._blocked(have)) is not None:
                self.plan.blocked.append((have, why))
            else:
                self.pruned.add((kind, have.ident))
                self.plan.changes.append(Change("remove", kind, have.ident, have=have))

    def _blocked(self, have: Item) -> str | None:
        """Why --prune may not remove an owned object (None: it may)."""
        if have.kind != "model":
            return None
        env, name = have.ident
        foreign = [e for e in self.state.all("endpoint")
                   if e.ident[:2] == (env, name) and ("endpoint", e.id) not in self.mine]
        if foreign:
            return (f"it has {len(foreign)} endpoint(s) this config does not own ({foreign[0].ident[2]}); "
                    "deregistering it would remove them too")
        return None

    def _exists(self, kind: str, ident: Ident) -> bool:
        """Whether an object is there after the apply: declared, or on the gateway and not pruned."""
        if ident in self.config.items[kind]:
            return True
        return self.state.exists(kind, ident) and (kind, ident) not in self.pruned

    def _check_references(self) -> None:
        for kind in ("user", "service_account", "key", "budget"):
            for want in self.config.items[kind].values():
                org = want.ident[0] if kind in ("key", "budget") else want.fields["org"]
                if org is not None and not self._exists("org", (org,)):
                    self._problem(want, "org", self._missing("org", org))
        for want in self.config.items["budget"].values():
            org, key = want.ident
            if key is not None and not self._exists("key", (org, key)):
                self._problem(want, "key", self._missing("key", f"{org}/{key}"))
        for want in self.config.items["model"].values():
            env, name = want.ident
            for fallback in want.fields["fallbacks"]:
                if fallback == name:
                    self._problem(want, "fallbacks", f"{name!r} cannot fall back to itself")
                elif not self._exists("model", (env, fallback)):
                    self._problem(want, "fallbacks", self._missing("model", f"{env}/{fallback}"))

    def _missing(self, kind: str, name: str) -> str:
        return f"{kind_name(kind)} {name!r} is neither in this config nor on the gateway"

    def _problem(self, want: Item, field_name: str | None, message: str) -> None:
        assert want.origin is not None  # declared items always know where they were written
        self.problems.append(want.origin.problem(field_name, message))


def make_plan(config: Config, state: State, *, prune: bool = False) -> Plan:
    """The plan that makes the gateway match `config`.

    Raises:
        ConfigInvalid: problems only visible against the gateway's state, each with file, line and field.
    """
    return _Planner(config, state, prune).run()
