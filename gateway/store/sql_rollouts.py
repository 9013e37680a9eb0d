"""Release histories and rollout state machines in the SQL store (a mixin of `SqlStore`).

Kept apart from the registry/auth tables' code; the same queries serve SQLite and PostgreSQL,
and every multi-row rule (one deployed revision, one active rollout) holds inside one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.store import ids
from gateway.store import validation as check
from gateway.store.db import Database, ForeignKeyViolation, Row, Session, UniqueViolation
from gateway.store.models import (
    RELEASE_DEPLOYERS,
    RELEASE_TRACKS,
    REVISION_STATUSES,
    ROLLOUT_ACTIVE_STATUSES,
    ROLLOUT_EVENT_PHASES,
    ROLLOUT_KINDS,
    ROLLOUT_STATUSES,
    ROLLOUT_TERMINAL_STATUSES,
    Release,
    ReleaseRevision,
    Rollout,
    RolloutEvent,
)
from gateway.store.rows import (
    encode_json,
    encode_time,
    release_from_rows,
    revision_from_row,
    rollout_event_from_row,
    rollout_from_row,
)

MAX_ROLLOUT_PAGE = 1000
_ACTIVE_SQL = "('" + "', '".join(ROLLOUT_ACTIVE_STATUSES) + "')"
_TERMINAL_SQL = "('" + "', '".join(ROLLOUT_TERMINAL_STATUSES) + "')"
_LATEST_REVISIONS = (
    "SELECT v.* FROM release_revisions v JOIN"
    " (SELECT release, MAX(revision) AS top FROM release_revisions GROUP BY release) t"
    " ON t.release = v.release AND t.top = v.revision"
)


def release_not_found(name: str) -> NotFound:
    return NotFound(f"release {name!r} not found", code="release_not_found", param="release")


def rollout_not_found(rollout_id: str) -> NotFound:
    return NotFound(f"rollout {rollout_id!r} not found", code="rollout_not_found", param="rollout_id")


def _urls(field: str, values: Sequence[str]) -> list[str]:
    return [check.url(field, v) for v in check.strings(field, values)]


def _owner(value: dict[str, Any] | None) -> str | None:
    return None if value is None else encode_json(check.json_object("owner", value))


def _revision_changes(
    status: str | None, runtime: dict[str, Any] | None, endpoints: Sequence[str] | None, description: str | None
) -> dict[str, Any]:
    """Column → stored value for the given revision fields (None keeps)."""
    changes: dict[str, Any] = {}
    if status is not None:
        changes["status"] = check.choice("status", status, REVISION_STATUSES)
    if runtime is not None:
        changes["runtime"] = encode_json(check.json_object("runtime", runtime))
    if endpoints is not None:
        changes["endpoints"] = encode_json(_urls("endpoints", endpoints))
    if description is not None:
        changes["description"] = check.text("description", description)
    return changes


def _rollout_changes(
    status: str | None,
    step: int | None,
    phase: str | None,
    state: dict[str, Any] | None,
    reason: str | None,
    owner: dict[str, Any] | None,
) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if status is not None:
        changes["status"] = check.choice("status", status, ROLLOUT_STATUSES)
    if step is not None:
        changes["step"] = check.integer("step", step)
    if phase is not None:
        changes["phase"] = check.name("phase", phase, allow_empty=True)
    if state is not None:
        changes["state"] = encode_json(check.json_object("state", state))
    if reason is not None:
        changes["reason"] = check.text("reason", reason)
    if owner is not None:
        changes["owner"] = _owner(owner)
    return changes


class ReleaseRolloutStore:
    """The releases / rollouts part of `SqlStore` (which provides `_db` and `_now`)."""

    _db: Database
    _now: Callable[[], datetime]

    # releases -------------------------------------------------------------------------

    async def add_release_revision(
        self,
        name: str,
        *,
        model: str,
        environment: str,
        deployer: str,
        track: str,
        version: str,
        status: str,
        values: dict[str, Any] | None = None,
        description: str = "",
        runtime: dict[str, Any] | None = None,
        endpoints: Sequence[str] = (),
    ) -> ReleaseRevision:
        """Record the next revision of `name` (previous max + 1), creating the release on its first.

        A `deployed` revision supersedes the release's other deployed revisions.

        Raises:
            Conflict: the release exists for another model, environment, deployer or track
                (code `release_mismatch`).
        """
        identity = {
            "model": check.name("model", model),
            "environment": check.name("environment", environment),
            "deployer": check.choice("deployer", deployer, RELEASE_DEPLOYERS),
            "track": check.choice("track", track, RELEASE_TRACKS),
        }
        name = check.name("name", name)
        version = check.name("version", version)
        status = check.choice("status", status, REVISION_STATUSES)
        values_json = encode_json(check.json_object("values", values or {}))
        runtime_json = encode_json(check.json_object("runtime", runtime or {}))
        endpoints_json = encode_json(_urls("endpoints", endpoints))
        description = check.text("description", description)
        now = encode_time(self._now())
        async with self._db.transaction() as tx:
            # The upsert takes the release's row lock: concurrent writers number revisions one after another.
            release = await tx.fetchone(
                "INSERT INTO releases (name, model, environment, deployer, track, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET updated_at = excluded.updated_at"
                " RETURNING *",
                (name, *identity.values(), now, now),
            )
            assert release is not None  # RETURNING yields the inserted or updated row
            for field, given in identity.items():
                if release[field] != given:
                    raise Conflict(
                        f"release {name!r} belongs to model {release['model']!r} in {release['environment']!r} "
                        f"(deployer {release['deployer']}, track {release['track']}): its {field} is not {given!r}",
                        code="release_mismatch", param=field,
                    )
            top = await tx.fetchone("SELECT MAX(revision) AS top FROM release_revisions WHERE release = ?", (name,))
            revision = int(top["top"] or 0) + 1 if top else 1
            if status == "deployed":
                await self._supersede(tx, name, revision, now)
            row = await tx.fetchone(
                "INSERT INTO release_revisions (release, revision, version, status, chart_values, endpoints, runtime,"
                " description, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                (name, revision, version, status, values_json, endpoints_json, runtime_json, description, now, now),
            )
        assert row is not None
        return revision_from_row(row)

    @staticmethod
    async def _supersede(tx: Session, release: str, revision: int, now: str) -> None:
        await tx.execute(
            "UPDATE release_revisions SET status = 'superseded', updated_at = ?"
            " WHERE release = ? AND status = 'deployed' AND revision <> ?",
            (now, release, revision),
        )

    async def update_release_revision(
        self,
        name: str,
        revision: int,
        *,
        status: str | None = None,
        runtime: dict[str, Any] | None = None,
        endpoints: Sequence[str] | None = None,
        description: str | None = None,
    ) -> ReleaseRevision:
        """Change the given fields of one revision (None keeps); `deployed` supersedes the others."""
        revision = check.integer("revision", revision, minimum=1)
        changes = _revision_changes(status, runtime, endpoints, description)
        now = encode_time(self._now())
        async with self._db.transaction() as tx:
            if not changes:
                row = await tx.fetchone(
                    "SELECT * FROM release_revisions WHERE release = ? AND revision = ?", (name, revision)
                )
            else:
                assignments = "".join(f"{column} = ?, " for column in changes)
                row = await tx.fetchone(
                    f"UPDATE release_revisions SET {assignments}updated_at = ? WHERE release = ? AND revision = ?"
                    " RETURNING *",
                    (*changes.values(), now, name, revision),
                )
            if row is None:
                await self._release_row(tx, name)
                raise NotFound(f"release {name!r} has no revision {revision}", code="revision_not_found",
                               param="revision")
            if changes:
                if changes.get("status") == "deployed":
                    await self._supersede(tx, name, revision, now)
                await tx.execute("UPDATE releases SET updated_at = ? WHERE name = ?", (now, name))
        return revision_from_row(row)

    @staticmethod
    async def _release_row(session: Session, name: str) -> Row:
        row = await session.fetchone("SELECT * FROM releases WHERE name = ?", (name,))
        if row is None:
            raise release_not_found(name)
        return row

    async def get_release(self, name: str) -> Release:
        release = await self._release_row(self._db, name)
        latest = await self._db.fetchone(
            "SELECT * FROM release_revisions WHERE release = ? ORDER BY revision DESC LIMIT 1", (name,)
        )
        if latest is None:  # a release row is only ever written with its first revision
            raise release_not_found(name)
        return release_from_rows(release, latest)

    async def release_history(self, name: str) -> list[ReleaseRevision]:
        """Every revision of the release, oldest first (NotFound if the release is unknown)."""
        await self._release_row(self._db, name)
        rows = await self._db.fetchall(
            "SELECT * FROM release_revisions WHERE release = ? ORDER BY revision", (name,)
        )
        return [revision_from_row(r) for r in rows]

    async def list_releases(
        self, *, model: str | None = None, environment: str | None = None, deployer: str | None = None
    ) -> list[Release]:
        """Releases in name order, filtered by any of model, environment, deployer."""
        filters = {"model": model, "environment": environment, "deployer": deployer}
        given = {column: value for column, value in filters.items() if value is not None}
        where = " AND ".join(f"{column} = ?" for column in given)
        releases = await self._db.fetchall(
            f"SELECT * FROM releases {'WHERE ' + where if where else ''} ORDER BY name", tuple(given.values())
        )
        if not releases:
            return []
        latest = {row["release"]: row for row in await self._db.fetchall(_LATEST_REVISIONS)}
        # A release created after the second query started has no revision here yet: the next listing shows it.
        return [release_from_rows(r, latest[r["name"]]) for r in releases if r["name"] in latest]

    async def delete_release(self, name: str) -> None:
        """Forget the release and its whole history (as `helm uninstall` does)."""
        if not await self._db.execute("DELETE FROM releases WHERE name = ?", (name,)):
            raise release_not_found(name)

    # rollouts -------------------------------------------------------------------------

    async def create_rollout(
        self,
        model: str,
        environment: str,
        *,
        version: str,
        kind: str,
        playbook: str = "",
        spec: dict[str, Any] | None = None,
        owner: dict[str, Any] | None = None,
    ) -> Rollout:
        """Start a rollout (status running, step 0, phase `pending`).

        Raises:
            Conflict: another rollout of this model and environment is active (code `rollout_in_progress`).
        """
        now = self._now()
        rollout = Rollout(
            id=ids.new_id(ids.ROLLOUT),
            model=check.name("model", model),
            environment=check.name("environment", environment),
            version=check.name("version", version),
            kind=check.choice("kind", kind, ROLLOUT_KINDS),
            playbook=check.name("playbook", playbook, allow_empty=True),
            spec=check.json_object("spec", spec or {}),
            status="running",
            step=0,
            phase="pending",
            state={},
            reason=None,
            owner=None if owner is None else check.json_object("owner", owner),
            version_no=1,
            created_at=now,
            updated_at=now,
        )
        try:
            await self._db.execute(
                "INSERT INTO rollouts (id, model, environment, version, kind, playbook, spec, status, step, phase,"
                " state, reason, owner, version_no, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (rollout.id, rollout.model, rollout.environment, rollout.version, rollout.kind, rollout.playbook,
                 encode_json(rollout.spec), rollout.status, rollout.step, rollout.phase, encode_json(rollout.state),
                 None, _owner(rollout.owner), rollout.version_no, encode_time(now), encode_time(now)),
            )
        except UniqueViolation as e:
            raise await self._in_progress(rollout.model, rollout.environment) from e
        return rollout

    async def _in_progress(self, model: str, environment: str) -> Conflict:
        active = await self._db.fetchone(
            f"SELECT id, status FROM rollouts WHERE model = ? AND environment = ? AND status IN {_ACTIVE_SQL}",
            (model, environment),
        )
        which = f"rollout {active['id']} is {active['status']}" if active else "another rollout is active"
        return Conflict(f"a rollout of model {model!r} in environment {environment!r} is in progress: {which}",
                        code="rollout_in_progress", param="model")

    async def get_rollout(self, rollout_id: str) -> Rollout:
        row = await self._db.fetchone("SELECT * FROM rollouts WHERE id = ?", (rollout_id,))
        if row is None:
            raise rollout_not_found(rollout_id)
        return rollout_from_row(row)

    async def list_rollouts(
        self,
        *,
        model: str | None = None,
        environment: str | None = None,
        active: bool | None = None,
        limit: int = 50,
    ) -> list[Rollout]:
        """Rollouts newest first, filtered by model, environment and active (running/aborting) or not."""
        limit = check.integer("limit", limit, minimum=1, maximum=MAX_ROLLOUT_PAGE)
        conditions: list[str] = []
        params: list[Any] = []
        for column, value in (("model", model), ("environment", environment)):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        if active is not None:
            conditions.append(f"status {'IN' if active else 'NOT IN'} {_ACTIVE_SQL}")
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = await self._db.fetchall(
            f"SELECT * FROM rollouts {where} ORDER BY created_at DESC, id DESC LIMIT ?", (*params, limit)
        )
        return [rollout_from_row(r) for r in rows]

    async def update_rollout(
        self,
        rollout_id: str,
        *,
        expected_version_no: int,
        status: str | None = None,
        step: int | None = None,
        phase: str | None = None,
        state: dict[str, Any] | None = None,
        reason: str | None = None,
        owner: dict[str, Any] | None = None,
    ) -> Rollout:
        """Change the given fields (None keeps) if the rollout is still at `expected_version_no`; bump it.

        Raises:
            NotFound: unknown rollout (code `rollout_not_found`).
            Conflict: the rollout was written since `expected_version_no` (code `rollout_changed`), or it
                has finished (code `rollout_finished`), or the change would make a second active rollout.
            InvalidRequest: nothing to change, or a bad value (naming the field).
        """
        expected = check.integer("expected_version_no", expected_version_no, minimum=1, maximum=check.INT64_MAX)
        changes = _rollout_changes(status, step, phase, state, reason, owner)
        if not changes:
            raise InvalidRequest("Nothing to change: give status, step, phase, state, reason or owner.")
        assignments = "".join(f"{column} = ?, " for column in changes)
        async with self._db.transaction() as tx:
            current = await tx.fetchone("SELECT id, status, version_no FROM rollouts WHERE id = ?", (rollout_id,))
            if current is None:
                raise rollout_not_found(rollout_id)
            if current["status"] in ROLLOUT_TERMINAL_STATUSES:
                raise Conflict(f"rollout {rollout_id} has {current['status']}: it cannot change any more",
                               code="rollout_finished", param="status")
            if int(current["version_no"]) != expected:
                raise self._changed(rollout_id, int(current["version_no"]), expected)
            try:
                # The version check is repeated in the UPDATE: a concurrent writer that got there first wins.
                row = await tx.fetchone(
                    f"UPDATE rollouts SET {assignments}version_no = version_no + 1, updated_at = ?"
                    f" WHERE id = ? AND version_no = ? AND status NOT IN {_TERMINAL_SQL} RETURNING *",
                    (*changes.values(), encode_time(self._now()), rollout_id, expected),
                )
            except UniqueViolation as e:  # the index of active rollouts
                raise Conflict(f"rollout {rollout_id} cannot become active: another rollout of its model is",
                               code="rollout_in_progress", param="status") from e
            if row is None:
                raise self._changed(rollout_id, None, expected)
        return rollout_from_row(row)

    @staticmethod
    def _changed(rollout_id: str, stored: int | None, expected: int) -> Conflict:
        now = f"is at version_no {stored}" if stored is not None else "was changed concurrently"
        return Conflict(f"rollout {rollout_id} {now}, not {expected}: another driver wrote it; reload and retry",
                        code="rollout_changed", param="expected_version_no")

    async def add_rollout_event(
        self,
        rollout_id: str,
        *,
        step: int,
        name: str,
        phase: str,
        message: str = "",
        data: dict[str, Any] | None = None,
    ) -> RolloutEvent:
        """Append one event to the rollout's timeline (also allowed once it has finished)."""
        values = (
            check.integer("step", step),
            check.name("name", name),
            check.choice("phase", phase, ROLLOUT_EVENT_PHASES),
            check.text("message", message),
            encode_json(check.json_object("data", data or {})),
        )
        try:
            row = await self._db.fetchone(
                "INSERT INTO rollout_events (rollout_id, ts, step, name, phase, message, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
                (rollout_id, encode_time(self._now()), *values),
            )
        except ForeignKeyViolation as e:
            raise rollout_not_found(rollout_id) from e
        assert row is not None
        return rollout_event_from_row(row)

    async def list_rollout_events(self, rollout_id: str) -> list[RolloutEvent]:
        """The rollout's events, oldest first (NotFound if the rollout is unknown)."""
        await self.get_rollout(rollout_id)
        rows = await self._db.fetchall("SELECT * FROM rollout_events WHERE rollout_id = ? ORDER BY id", (rollout_id,))
        return [rollout_event_from_row(r) for r in rows]
