"""Export jobs (a mixin of `SqlStore`): `/analytics/v1/exports` jobs that survive restarts (issue 13, helper B).

A job is claimed with a lease: the runner that holds it renews the lease while it works, and a job whose
lease ran out (its runner died) is claimed again by any runner and redone from scratch, until
`max_attempts` claims have been used; then it fails with the reason. Every state change is one
conditional UPDATE, so two runners (or two replicas) never both own a job, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway.errors import Conflict, NotFound
from gateway.store import validation as check
from gateway.store.db import Database, Row, UniqueViolation
from gateway.store.models import Record
from gateway.store.rows import decode_json, decode_optional_time, decode_time, encode_json, encode_time

EXPORT_ID_PREFIX = "exp"
EXPORT_STATUSES = ("queued", "running", "succeeded", "failed")
ACTIVE_STATUSES = ("queued", "running")
MAX_EXPORT_PAGE = 1000
MAX_ERROR = 2000  # characters of a failure reason kept


@dataclass(frozen=True, slots=True)
class ExportJob(Record):
    """One export job. `spec` is the export's parameters (org, start, end, format, schema) as JSON;
    the results (rows … sha256, object_path) are set together, only when the file is complete in the lake."""

    id: str
    org_id: str | None  # None: every org (a global caller's export)
    spec: dict[str, Any]
    status: str  # queued | running | succeeded | failed
    attempts: int  # claims so far (a crashed runner's claim counts)
    created_by: str  # the audit actor who asked for it
    created_at: datetime
    lease_owner: str | None = None
    lease_until: datetime | None = None  # running: the lease; queued: not before (a retry's back-off)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    object_path: str | None = None
    rows: int | None = None
    requests: int | None = None
    cost_micros: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    error: str | None = None


def export_from_row(row: Row) -> ExportJob:
    return ExportJob(
        id=row["id"], org_id=row["org_id"], spec=decode_json(row["spec"]), status=row["status"],
        attempts=row["attempts"], created_by=row["created_by"], created_at=decode_time(row["created_at"]),
        lease_owner=row["lease_owner"], lease_until=decode_optional_time(row["lease_until"]),
        started_at=decode_optional_time(row["started_at"]), finished_at=decode_optional_time(row["finished_at"]),
        object_path=row["object_path"], rows=row["row_count"], requests=row["request_count"],
        cost_micros=row["cost_micros"], bytes=row["size_bytes"], sha256=row["sha256"], error=row["error"],
    )


def idempotency_digest(scope: str, key: str) -> str:
    """What the store keeps of an Idempotency-Key: a digest per caller, so two callers' keys never collide."""
    return hashlib.sha256(f"{scope}\n{key}".encode()).hexdigest()


def _error_text(error: str) -> str:
    text = " ".join(error.split())  # one line
    return text[:MAX_ERROR] or "unknown error"


def _lease(seconds: float) -> float:
    if not 0 < seconds <= 86_400:
        raise ValueError(f"lease_s={seconds!r} is invalid: expected 0 < lease_s <= 86400")
    return seconds


_CLAIMABLE = ("(status = 'queued' AND (lease_until IS NULL OR lease_until <= ?))"
              " OR (status = 'running' AND lease_until < ? AND attempts < ?)")


class ExportStore:
    """The export-job part of `SqlStore` (which provides `_db` and `_now`)."""

    _db: Database
    _now: Callable[[], datetime]

    async def create_export(self, job_id: str, *, org_id: str | None, spec: dict[str, Any], created_by: str,
                            idempotency_key: str | None = None, request_hash: str | None = None,
                            max_active: int | None = None) -> tuple[ExportJob, bool]:
        """Queue a job; return it and whether it is new.

        With `idempotency_key` (already a per-caller digest, see `idempotency_digest`), a second call
        returns the first job (False) when its `request_hash` (a digest of what was asked: the same body
        asking for "the last 7 days" later resolves to another range) is the same, and is a Conflict otherwise.

        Raises:
            Conflict: the key was used for another export (`idempotency_key_reused`), or the org already
                has `max_active` queued or running jobs (`too_many_exports`).
        """
        values = (
            check.name("id", job_id), None if org_id is None else check.name("org_id", org_id),
            encode_json(check.json_object("spec", spec)), check.name("created_by", created_by),
            None if idempotency_key is None else check.name("idempotency_key", idempotency_key),
            None if request_hash is None else check.name("request_hash", request_hash),
            encode_time(self._now()),
        )
        async with self._db.transaction() as tx:
            if idempotency_key is not None:
                row = await tx.fetchone("SELECT * FROM export_jobs WHERE idempotency_key = ?", (idempotency_key,))
                if row is not None:
                    job = export_from_row(row)
                    if row["request_hash"] != request_hash or job.org_id != org_id:
                        raise Conflict("This Idempotency-Key was already used for another export.",
                                       code="idempotency_key_reused", param="Idempotency-Key")
                    return job, False
            if max_active is not None:
                org_clause = "org_id IS NULL" if org_id is None else "org_id = ?"
                active = await tx.fetchone(
                    f"SELECT COUNT(*) AS n FROM export_jobs WHERE {org_clause} AND status IN ('queued', 'running')",
                    () if org_id is None else (org_id,))
                if active is not None and active["n"] >= max_active:
                    raise Conflict(f"{active['n']} exports of this org are queued or running (at most {max_active}); "
                                   "wait for one to finish.", code="too_many_exports")
            try:
                row = await tx.fetchone(
                    "INSERT INTO export_jobs (id, org_id, spec, status, attempts, created_by, idempotency_key,"
                    " request_hash, created_at) VALUES (?, ?, ?, 'queued', 0, ?, ?, ?, ?) RETURNING *", values)
            except UniqueViolation as e:
                raise Conflict("This Idempotency-Key is being used by a concurrent request; retry.",
                               code="idempotency_key_reused", param="Idempotency-Key") from e
        assert row is not None  # RETURNING yields the inserted row
        return export_from_row(row), True

    async def get_export(self, job_id: str) -> ExportJob:
        row = await self._db.fetchone("SELECT * FROM export_jobs WHERE id = ?", (job_id,))
        if row is None:
            raise NotFound(f"export {job_id[:64]!r} not found", code="export_not_found", param="id")
        return export_from_row(row)

    async def list_exports(self, *, org_id: str | None = None, all_orgs: bool = False, status: str | None = None,
                           limit: int = 100, before: tuple[datetime, str] | None = None) -> list[ExportJob]:
        """Newest first. `org_id` limits to one org's jobs; without it, `all_orgs` lists every job
        (global callers) and otherwise only the jobs of no org. `before`: (created_at, id) of the last
        job of the previous page."""
        limit = check.integer("limit", limit, minimum=1, maximum=MAX_EXPORT_PAGE)
        clauses: list[str] = []
        params: list[Any] = []
        if org_id is not None:
            clauses.append("org_id = ?")
            params.append(org_id)
        elif not all_orgs:
            clauses.append("org_id IS NULL")
        if status is not None:
            clauses.append("status = ?")
            params.append(check.choice("status", status, EXPORT_STATUSES))
        if before is not None:
            created, last_id = encode_time(before[0]), before[1]
            clauses.append("(created_at < ? OR (created_at = ? AND id < ?))")
            params += [created, created, last_id]
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._db.fetchall(
            f"SELECT * FROM export_jobs{where} ORDER BY created_at DESC, id DESC LIMIT ?", (*params, limit))
        return [export_from_row(r) for r in rows]

    async def claim_export(self, owner: str, *, lease_s: float, max_attempts: int) -> ExportJob | None:
        """Take the oldest claimable job for `owner` (attempts + 1, a lease of `lease_s`), or None.

        Claimable: queued (and past its retry back-off), or running with an expired lease (its runner
        died) and fewer than `max_attempts` claims. An expired job that has used them all is failed here.
        """
        owner = check.name("owner", owner)
        now = self._now()
        now_text, until_text = encode_time(now), encode_time(now + timedelta(seconds=_lease(lease_s)))
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE export_jobs SET status = 'failed', finished_at = ?, lease_owner = NULL, lease_until = NULL,"
                " error = ? WHERE status = 'running' AND lease_until < ? AND attempts >= ?",
                (now_text, f"gave up after {max_attempts} attempts: the last runner stopped (its lease expired) "
                           "before the export was complete", now_text, max_attempts))
            # The same condition twice: under concurrency (PostgreSQL re-checks the row it waited for) a
            # job another runner took in the meantime is skipped, never taken twice.
            row = await tx.fetchone(
                "UPDATE export_jobs SET status = 'running', attempts = attempts + 1, lease_owner = ?,"
                " lease_until = ?, started_at = ?, finished_at = NULL"
                f" WHERE id = (SELECT id FROM export_jobs WHERE {_CLAIMABLE} ORDER BY created_at, id LIMIT 1)"
                f" AND ({_CLAIMABLE}) RETURNING *",
                (owner, until_text, now_text, now_text, now_text, max_attempts, now_text, now_text, max_attempts))
        return None if row is None else export_from_row(row)

    async def renew_export(self, job_id: str, owner: str, *, lease_s: float) -> bool:
        """Extend `owner`'s lease on a running job; False when the lease is no longer its own."""
        until = encode_time(self._now() + timedelta(seconds=_lease(lease_s)))
        changed = await self._db.execute(
            "UPDATE export_jobs SET lease_until = ? WHERE id = ? AND status = 'running' AND lease_owner = ?",
            (until, job_id, owner))
        return changed == 1

    async def finish_export(self, job_id: str, owner: str, *, object_path: str, rows: int, requests: int,
                            cost_micros: int, size_bytes: int, sha256: str) -> ExportJob | None:
        """Mark `owner`'s running job succeeded with its results (call only once the object is complete);
        None when the job is no longer `owner`'s (its lease expired and another runner took it)."""
        for name, value in (("rows", rows), ("requests", requests), ("cost_micros", cost_micros),
                            ("bytes", size_bytes)):
            check.integer(name, value, minimum=0, maximum=check.INT64_MAX)
        row = await self._db.fetchone(
            "UPDATE export_jobs SET status = 'succeeded', finished_at = ?, lease_owner = NULL, lease_until = NULL,"
            " object_path = ?, row_count = ?, request_count = ?, cost_micros = ?, size_bytes = ?, sha256 = ?,"
            " error = NULL WHERE id = ? AND status = 'running' AND lease_owner = ? RETURNING *",
            (encode_time(self._now()), check.text("object_path", object_path), rows, requests, cost_micros,
             size_bytes, check.name("sha256", sha256), job_id, owner))
        return None if row is None else export_from_row(row)

    async def fail_export(self, job_id: str, owner: str, error: str, *,
                          retry_after_s: float | None = None) -> ExportJob | None:
        """`owner`'s attempt failed: queue the job again after `retry_after_s` (None: fail it for good).
        None when the job is no longer `owner`'s."""
        now = self._now()
        if retry_after_s is None:
            status, lease_until, finished = "failed", None, encode_time(now)
        else:
            status, lease_until, finished = "queued", encode_time(now + timedelta(seconds=retry_after_s)), None
        row = await self._db.fetchone(
            "UPDATE export_jobs SET status = ?, lease_owner = NULL, lease_until = ?, finished_at = ?, error = ?"
            " WHERE id = ? AND status = 'running' AND lease_owner = ? RETURNING *",
            (status, lease_until, finished, _error_text(error), job_id, owner))
        return None if row is None else export_from_row(row)

    async def release_export(self, job_id: str, owner: str) -> bool:
        """Give a running job back unfinished (the runner is stopping): queued again at once, and this
        claim does not count as an attempt. False when the job is no longer `owner`'s."""
        changed = await self._db.execute(
            "UPDATE export_jobs SET status = 'queued', attempts = attempts - 1, lease_owner = NULL,"
            " lease_until = NULL WHERE id = ? AND status = 'running' AND lease_owner = ?", (job_id, owner))
        return changed == 1
