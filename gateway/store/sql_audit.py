"""The audit log in the SQL store (a mixin of `SqlStore`): append entries, read them filtered and paged by id.

Paging is by id, never by offset: ids only grow, so a cursor stays exact while entries are added.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from gateway.store import validation as check
from gateway.store.db import Database, Row
from gateway.store.models import AuditEntry, AuditFilter
from gateway.store.rows import audit_from_row, encode_json, encode_time

MAX_AUDIT_PAGE = 10_000
MAX_AUDIT_ID = 2**63 - 1
_COLUMNS = ("ts", "actor", "action", "target", "detail", "actor_type", "actor_id", "org_id", "request_id",
            "source_ip", "source", "before_json", "after_json")
_INSERT = (f"INSERT INTO audit_log ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
           " RETURNING *")


def _optional_name(field: str, value: str | None) -> str | None:
    return None if value is None else check.name(field, value)


def _optional_object(field: str, value: dict[str, Any] | None) -> str | None:
    return None if value is None else encode_json(check.json_object(field, value))


def _where(filters: AuditFilter, before_id: int | None, after_id: int | None) -> tuple[str, list[Any]]:
    """The WHERE clause (or "") and its parameters."""
    clauses: list[str] = []
    params: list[Any] = []
    for column in ("actor", "target", "org_id"):
        value = getattr(filters, column)
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if filters.action is not None:
        if filters.action.endswith("*"):
            prefix = filters.action[:-1]
            if prefix:  # substr, not LIKE: SQLite's LIKE ignores case and both treat '_' as a wildcard
                clauses.append("substr(action, 1, ?) = ?")
                params += [len(prefix), prefix]
        else:
            clauses.append("action = ?")
            params.append(filters.action)
    for column, op, moment in (("ts", ">=", filters.since), ("ts", "<", filters.until)):
        if moment is not None:
            clauses.append(f"{column} {op} ?")
            params.append(encode_time(check.aware_time("since" if op == ">=" else "until", moment)))
    for op, cursor, name in (("<", before_id, "before_id"), (">", after_id, "after_id")):
        if cursor is not None:
            clauses.append(f"id {op} ?")
            params.append(check.integer(name, cursor, minimum=0, maximum=MAX_AUDIT_ID))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


class AuditStore:
    """The audit part of `SqlStore` (which provides `_db` and `_now`)."""

    _db: Database
    _now: Callable[[], datetime]

    async def add_audit(
        self,
        actor: str,
        action: str,
        target: str,
        detail: dict[str, Any] | None = None,
        *,
        actor_type: str | None = None,
        actor_id: str | None = None,
        org_id: str | None = None,
        request_id: str | None = None,
        source_ip: str | None = None,
        source: str | None = None,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> AuditEntry:
        values = (
            encode_time(self._now()), check.name("actor", actor), check.name("action", action),
            check.name("target", target, allow_empty=True), encode_json(check.json_object("detail", detail or {})),
            _optional_name("actor_type", actor_type), _optional_name("actor_id", actor_id),
            _optional_name("org_id", org_id), _optional_name("request_id", request_id),
            _optional_name("source_ip", source_ip), _optional_name("source", source),
            _optional_object("before", before), _optional_object("after", after),
        )
        row: Row | None = await self._db.fetchone(_INSERT, values)
        assert row is not None  # RETURNING yields the inserted row
        return audit_from_row(row)

    async def list_audit(
        self,
        filters: AuditFilter | None = None,
        *,
        limit: int = 100,
        before_id: int | None = None,
        after_id: int | None = None,
        oldest_first: bool = False,
    ) -> list[AuditEntry]:
        limit = check.integer("limit", limit, minimum=1, maximum=MAX_AUDIT_PAGE)
        where, params = _where(filters or AuditFilter(), before_id, after_id)
        order = "ASC" if oldest_first else "DESC"
        rows = await self._db.fetchall(f"SELECT * FROM audit_log{where} ORDER BY id {order} LIMIT ?",
                                       (*params, limit))
        return [audit_from_row(r) for r in rows]
