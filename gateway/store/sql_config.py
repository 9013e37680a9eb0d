"""Declarative configuration: which objects an applied config owns (a mixin of `SqlStore`).

Ownership is keyed by object id, so `opsctl apply --prune` can only ever remove what its own
config created or adopted; an object made by hand under a pruned object's name stays unowned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from gateway.errors import Conflict, InvalidRequest
from gateway.store import ids
from gateway.store import validation as check
from gateway.store.db import Database
from gateway.store.models import CONFIG_KINDS, OwnedObject, OwnershipChange
from gateway.store.rows import encode_time, owned_from_row

# An owned object's id must be one of its kind: a swapped kind would let prune remove the wrong thing.
ID_PREFIXES = {
    "org": ids.ORG, "user": ids.USER, "service_account": ids.SERVICE_ACCOUNT, "api_key": ids.KEY,
    "budget": ids.BUDGET, "model": ids.MODEL, "endpoint": ids.ENDPOINT,
}
MAX_OWNED_NAME = check.MAX_TEXT_LENGTH  # endpoint names carry their URL
MAX_NAMED_CONFLICTS = 10

_UPSERT = (
    "INSERT INTO config_ownership (kind, object_id, name, owner, updated_at) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (kind, object_id) DO UPDATE SET name = excluded.name, owner = excluded.owner,"
    " updated_at = excluded.updated_at"
)
# Without `adopt`, a row another owner holds is left alone (and RETURNING yields nothing), even when that
# owner committed it after we read the table.
_ONLY_OURS = " WHERE config_ownership.owner = excluded.owner"

ObjectRef = tuple[str, str, str]  # (kind, object_id, name)


def _label(obj: OwnedObject) -> str:
    return f"{obj.kind} {obj.name!r} ({obj.object_id}) of {obj.owner!r}"


def _owned_elsewhere(objects: Sequence[OwnedObject]) -> Conflict:
    named = "; ".join(_label(o) for o in objects[:MAX_NAMED_CONFLICTS])
    more = f"; and {len(objects) - MAX_NAMED_CONFLICTS} more" if len(objects) > MAX_NAMED_CONFLICTS else ""
    return Conflict(
        f"{len(objects)} object(s) are owned by another config: {named}{more}. Set adopt to take them over.",
        code="owned_by_another_config", param="objects",
    )


def _wanted(objects: Sequence[ObjectRef]) -> dict[tuple[str, str], str]:
    """Validate (kind, object_id, name) triples into (kind, object_id) → name; InvalidRequest names the item."""
    wanted: dict[tuple[str, str], str] = {}
    for i, (kind, object_id, name) in enumerate(objects):
        item = f"objects[{i}]"
        kind = check.choice(f"{item}.kind", kind, CONFIG_KINDS)
        object_id = check.name(f"{item}.object_id", object_id)
        if not object_id.startswith(ID_PREFIXES[kind] + "_"):
            raise InvalidRequest(f"{item}.object_id {object_id[:64]!r} is not the id of a {kind} "
                                 f"(expected {ID_PREFIXES[kind]}_…)", param=f"{item}.object_id")
        name = check.text(f"{item}.name", name, max_length=MAX_OWNED_NAME)
        if not name.strip() or "\n" in name or "\t" in name:
            raise InvalidRequest(f"{item}.name must be one non-empty line", param=f"{item}.name")
        if (kind, object_id) in wanted:
            raise InvalidRequest(f"{item} repeats {kind} {object_id}", param=f"{item}.object_id")
        wanted[(kind, object_id)] = name
    return wanted


def _order(objects: list[OwnedObject]) -> list[OwnedObject]:
    # Sorted here, not in SQL: PostgreSQL's collation and SQLite's byte order disagree on punctuation.
    return sorted(objects, key=lambda o: (o.owner, o.kind, o.name, o.object_id))


class ConfigStore:
    """Needs `self._db`, `self._now()` from `SqlStore`."""

    _db: Database
    _now: Callable[[], datetime]

    async def list_owned(self, *, owner: str | None = None, kind: str | None = None) -> list[OwnedObject]:
        """The objects `owner` owns (every owner's when None), of one kind or all; by owner, kind and name."""
        clauses: list[str] = []
        params: list[str] = []
        if owner is not None:
            clauses.append("owner = ?")
            params.append(check.name("owner", owner))
        if kind is not None:
            clauses.append("kind = ?")
            params.append(check.choice("kind", kind, CONFIG_KINDS))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._db.fetchall(f"SELECT * FROM config_ownership{where}", params)
        return _order([owned_from_row(r) for r in rows])

    async def replace_owned(self, owner: str, objects: Sequence[ObjectRef], *, adopt: bool = False) -> OwnershipChange:
        """Make `objects` ((kind, object_id, name) triples) exactly what `owner` owns, in one transaction.

        Objects owned by another owner are a Conflict naming them unless `adopt` (then they change
        hands). Objects dropped from the set are only disowned, never touched themselves.
        """
        owner = check.name("owner", owner)
        wanted = _wanted(objects)
        now = encode_time(self._now())
        async with self._db.transaction() as tx:
            held = {(o.kind, o.object_id): o for o in map(owned_from_row, await tx.fetchall(
                "SELECT * FROM config_ownership"))}
            taken = [held[k] for k in wanted if k in held and held[k].owner != owner]
            if taken and not adopt:
                raise _owned_elsewhere(_order(taken))
            removed = [o for k, o in held.items() if o.owner == owner and k not in wanted]
            for obj in removed:
                await tx.execute("DELETE FROM config_ownership WHERE kind = ? AND object_id = ? AND owner = ?",
                                 (obj.kind, obj.object_id, owner))
            added: list[OwnedObject] = []
            renamed: list[OwnedObject] = []
            for (kind, object_id), name in wanted.items():
                before = held.get((kind, object_id))
                if before is not None and before.owner == owner and before.name == name:
                    continue
                row = await tx.fetchone(_UPSERT + ("" if adopt else _ONLY_OURS) + " RETURNING *",
                                        (kind, object_id, name, owner, now))
                if row is None:  # another owner claimed it since we read the table
                    raise Conflict(f"{kind} {name!r} ({object_id}) was just claimed by another config; apply again "
                                   "(or set adopt)", code="owned_by_another_config", param="objects")
                (renamed if before is not None and before.owner == owner else added).append(owned_from_row(row))
            after = await tx.fetchall("SELECT * FROM config_ownership WHERE owner = ?", (owner,))
        return OwnershipChange(
            objects=tuple(_order([owned_from_row(r) for r in after])),
            added=tuple(_order(added)),
            renamed=tuple(_order(renamed)),
            removed=tuple(_order(removed)),
            adopted=tuple(_order(taken)),
        )
