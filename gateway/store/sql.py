"""The one SQL implementation of `Store`: every query written once for SQLite and PostgreSQL.

Backend differences stay in the `Database` adapters; here, constraint violations become
Conflict / NotFound messages that name the thing, and bad values become InvalidRequest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.store import ids
from gateway.store import validation as check
from gateway.store.db import (
    Database,
    ForeignKeyViolation,
    Row,
    Session,
    UniqueViolation,
)
from gateway.store.migrations import apply_migrations, current_version
from gateway.store.models import (
    BUDGET_PERIODS,
    ENDPOINT_STATUSES,
    MODEL_STATUSES,
    ApiKey,
    Budget,
    Endpoint,
    Model,
    Organization,
    RegistryEntry,
)
from gateway.store.rows import (
    budget_from_row,
    encode_json,
    encode_time,
    endpoint_from_row,
    key_from_row,
    model_from_row,
    org_from_row,
)
from gateway.store.sql_audit import AuditStore
from gateway.store.sql_config import ConfigStore
from gateway.store.sql_exports import ExportStore
from gateway.store.sql_identity import IdentityStore
from gateway.store.sql_rollouts import ReleaseRolloutStore

_BUMP_REGISTRY = "UPDATE registry_state SET revision = revision + 1 WHERE id = 1"
# What keeps an org from being deleted (column → how the refusal names it); one parameter per count.
_ORG_CONTENT_NAMES = {"keys": "active API key(s)", "users": "active user(s)",
                      "service_accounts": "active service account(s)", "budgets": "budget(s)"}
_ORG_CONTENTS = (
    "SELECT (SELECT COUNT(*) FROM api_keys WHERE org_id = ? AND status = 'active') AS keys,"
    " (SELECT COUNT(*) FROM users WHERE org_id = ? AND status = 'active') AS users,"
    " (SELECT COUNT(*) FROM service_accounts WHERE org_id = ? AND status = 'active') AS service_accounts,"
    " (SELECT COUNT(*) FROM budgets WHERE org_id = ?) AS budgets"
)


def utc_now() -> datetime:
    return datetime.now(UTC)


def _model_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """Validate `update_model` keyword changes into column → stored value (None = keep)."""
    out: dict[str, Any] = {}
    for field, value in changes.items():
        if value is None:
            continue
        if field == "status":
            out[field] = check.choice(field, value, MODEL_STATUSES)
        elif field in ("input_price", "output_price"):
            out[field] = check.price(field, value)
        elif field == "max_tokens":
            out[field] = check.integer(field, value, minimum=1)
        elif field == "fallbacks":
            out[field] = encode_json(list(check.strings(field, value)))
        elif field == "metadata":
            out[field] = encode_json(check.json_object(field, value))
        else:
            raise InvalidRequest(
                f"{field} cannot be changed: expected status, input_price, output_price, max_tokens, "
                "fallbacks or metadata",
                param=field,
            )
    return out


def _key_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """Validate `update_api_key` keyword changes into column → stored value (None clears a nullable one)."""
    out: dict[str, Any] = {}
    for field, value in changes.items():
        if field == "name":
            out[field] = check.name(field, value, allow_empty=True)
        elif field in ("rpm_limit", "tpm_limit"):
            out[field] = check.optional_integer(field, value)
        elif field == "allowed_models":
            out[field] = encode_json(list(check.strings(field, value)))
        elif field == "environment":
            out[field] = None if value is None else check.name(field, value)
        elif field == "expires_at":
            out[field] = None if value is None else encode_time(check.aware_time(field, value))
        else:
            raise InvalidRequest(
                f"{field} cannot be changed: expected name, rpm_limit, tpm_limit, allowed_models, environment "
                "or expires_at",
                param=field,
            )
    return out


class SqlStore(ReleaseRolloutStore, IdentityStore, ConfigStore, AuditStore, ExportStore):
    """`Store` over a `Database` adapter; construct with `gateway.store.open_store(url)`.

    Releases and rollouts live in the `ReleaseRolloutStore` mixin (gateway/store/sql_rollouts.py), users,
    service accounts and tokens in `IdentityStore` (sql_identity.py), config ownership in `ConfigStore` (sql_config.py),
    the audit log in `AuditStore` (sql_audit.py).
    """

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._db = db
        self._clock = clock
        self.backend = db.dialect

    def _now(self) -> datetime:
        # Stored with microseconds in UTC; return exactly what a later read gives back.
        return self._clock().astimezone(UTC)

    # lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        await self._db.open()
        try:
            await apply_migrations(self._db, now=encode_time(self._now()))
        except BaseException:
            await self._db.close()
            raise

    async def close(self) -> None:
        await self._db.close()

    async def ping(self) -> None:
        await self._db.fetchone("SELECT 1 AS ok")

    async def schema_version(self) -> int:
        return await current_version(self._db)

    async def registry_revision(self) -> int:
        """A counter bumped by every model/endpoint write (cheap "did anything change?")."""
        row = await self._db.fetchone("SELECT revision FROM registry_state WHERE id = 1")
        return int(row["revision"]) if row else 0

    # organizations --------------------------------------------------------------------

    async def _org_row(self, session: Session, id_or_name: str) -> Row:
        rows = await session.fetchall("SELECT * FROM organizations WHERE id = ? OR name = ?", (id_or_name, id_or_name))
        if not rows:
            raise NotFound(f"organization {id_or_name!r} not found", param="org")
        return next((r for r in rows if r["id"] == id_or_name), rows[0])

    async def create_org(self, name: str, *, rpm_limit: int | None = None, tpm_limit: int | None = None) -> Organization:
        org = Organization(
            id=ids.new_id(ids.ORG),
            name=check.name("name", name),
            rpm_limit=check.optional_integer("rpm_limit", rpm_limit),
            tpm_limit=check.optional_integer("tpm_limit", tpm_limit),
            created_at=self._now(),
        )
        try:
            await self._db.execute(
                "INSERT INTO organizations (id, name, rpm_limit, tpm_limit, created_at) VALUES (?, ?, ?, ?, ?)",
                (org.id, org.name, org.rpm_limit, org.tpm_limit, encode_time(org.created_at)),
            )
        except UniqueViolation as e:
            raise Conflict(f"organization {name!r} already exists", param="name") from e
        return org

    async def get_org(self, id_or_name: str) -> Organization:
        return org_from_row(await self._org_row(self._db, id_or_name))

    async def list_orgs(self) -> list[Organization]:
        return [org_from_row(r) for r in await self._db.fetchall("SELECT * FROM organizations ORDER BY name")]

    async def update_org(
        self, id_or_name: str, *, rpm_limit: int | None = None, tpm_limit: int | None = None,
        clear: Sequence[str] = (),
    ) -> Organization:
        """Change the given limits (None keeps the current value); the limits named in `clear` are removed."""
        changes = {
            "rpm_limit": check.optional_integer("rpm_limit", rpm_limit),
            "tpm_limit": check.optional_integer("tpm_limit", tpm_limit),
        }
        changes = {k: v for k, v in changes.items() if v is not None}
        for name in clear:
            if name not in ("rpm_limit", "tpm_limit"):
                raise InvalidRequest(f"{name} cannot be cleared: expected rpm_limit or tpm_limit", param=name)
            if name in changes:
                raise InvalidRequest(f"{name} is both set and cleared", param=name)
            changes[name] = None
        async with self._db.transaction() as tx:
            row = await self._org_row(tx, id_or_name)
            if changes:
                assignments = ", ".join(f"{column} = ?" for column in changes)
                row = await tx.fetchone(
                    f"UPDATE organizations SET {assignments} WHERE id = ? RETURNING *", (*changes.values(), row["id"])
                ) or row
        return org_from_row(row)

    async def delete_org(self, id_or_name: str) -> None:
        """Delete an org that holds nothing live; its revoked keys and disabled users/service accounts go with it.

        Conflict (code org_not_empty, naming how many of each) while it has active API keys, active users
        or service accounts, or budgets.
        """
        async with self._db.transaction() as tx:
            org = await self._org_row(tx, id_or_name)
            if self._db.dialect == "postgresql":
                # Blocks a concurrent key/user insert (its foreign-key check) until we are done, so a key
                # created meanwhile is either counted below or refused: never deleted unseen by the cascade.
                # SQLite's write transaction is already exclusive.
                await tx.fetchone("SELECT id FROM organizations WHERE id = ? FOR UPDATE", (org["id"],))
            counts = await tx.fetchone(_ORG_CONTENTS, (org["id"],) * len(_ORG_CONTENT_NAMES))
            live = [f"{counts[column]} {label}" for column, label in _ORG_CONTENT_NAMES.items()
                    if counts and counts[column]]
            if live:
                raise Conflict(f"organization {org['name']!r} still has {', '.join(live)}: revoke, disable or "
                               "delete them first", code="org_not_empty", param="org")
            await tx.execute("DELETE FROM organizations WHERE id = ?", (org["id"],))

    # api keys -------------------------------------------------------------------------

    async def create_api_key(
        self,
        org_id: str,
        *,
        name: str,
        key_hash: str,
        prefix: str,
        rpm_limit: int | None = None,
        tpm_limit: int | None = None,
        allowed_models: Sequence[str] = (),
        environment: str | None = None,
        expires_at: datetime | None = None,
        require_signature: bool = False,
        signing_key: str | None = None,
    ) -> ApiKey:
        """Store a key of an org (given by id or name); Conflict if the hash is already stored.

        A key that requires signed requests comes with its signing key (64 hex); no other key has one.
        """
        name = check.name("name", name, allow_empty=True)
        key_hash = check.name("key_hash", key_hash)
        prefix = check.name("prefix", prefix, allow_empty=True)
        rpm = check.optional_integer("rpm_limit", rpm_limit)
        tpm = check.optional_integer("tpm_limit", tpm_limit)
        models = check.strings("allowed_models", allowed_models)
        environment = None if environment is None else check.name("environment", environment)
        expires = None if expires_at is None else check.aware_time("expires_at", expires_at)
        if require_signature is not (signing_key is not None) or (
                signing_key is not None and (len(signing_key) != 64 or signing_key.strip("0123456789abcdef"))):
            raise InvalidRequest("signing_key must be 64 lowercase hex characters, given exactly when "
                                 "require_signature is true", param="signing_key")
        async with self._db.transaction() as tx:
            org = await self._org_row(tx, org_id)
            key = ApiKey(
                id=ids.new_id(ids.KEY), org_id=org["id"], name=name, prefix=prefix, key_hash=key_hash,
                status="active", rpm_limit=rpm, tpm_limit=tpm, allowed_models=models, environment=environment,
                expires_at=None if expires is None else expires.astimezone(UTC), created_at=self._now(),
                require_signature=require_signature, signing_key=signing_key,
            )
            try:
                await tx.execute(
                    "INSERT INTO api_keys (id, org_id, name, prefix, key_hash, status, rpm_limit, tpm_limit,"
                    " allowed_models, environment, expires_at, created_at, require_signature, signing_key)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (key.id, key.org_id, key.name, key.prefix, key.key_hash, key.status, key.rpm_limit,
                     key.tpm_limit, encode_json(list(models)), key.environment,
                     None if key.expires_at is None else encode_time(key.expires_at), encode_time(key.created_at),
                     key.require_signature, key.signing_key),
                )
            except UniqueViolation as e:
                raise Conflict("an API key with this hash already exists", param="key_hash") from e
            except ForeignKeyViolation as e:
                raise NotFound(f"organization {org_id!r} not found", param="org") from e
        return key

    async def get_api_key(self, key_id: str) -> ApiKey:
        row = await self._db.fetchone("SELECT * FROM api_keys WHERE id = ?", (key_id,))
        if row is None:
            raise NotFound(f"API key {key_id!r} not found", param="key_id")
        return key_from_row(row)

    async def find_api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key with this hash whatever its status or expiry (the caller decides), or None."""
        row = await self._db.fetchone("SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,))
        return None if row is None else key_from_row(row)

    async def list_api_keys(self, org_id: str | None = None) -> list[ApiKey]:
        """Keys of one org (id or name; NotFound if unknown), or of every org."""
        if org_id is None:
            rows = await self._db.fetchall("SELECT * FROM api_keys ORDER BY created_at, id")
        else:
            org = await self._org_row(self._db, org_id)
            rows = await self._db.fetchall("SELECT * FROM api_keys WHERE org_id = ? ORDER BY created_at, id", (org["id"],))
        return [key_from_row(r) for r in rows]

    async def revoke_api_key(self, key_id: str) -> ApiKey:
        """Mark the key revoked (idempotent); it stays listed for audit."""
        row = await self._db.fetchone("UPDATE api_keys SET status = 'revoked' WHERE id = ? RETURNING *", (key_id,))
        if row is None:
            raise NotFound(f"API key {key_id!r} not found", param="key_id")
        return key_from_row(row)

    async def update_api_key(self, key_id: str, **changes: Any) -> ApiKey:
        """Change any of name, rpm_limit, tpm_limit, allowed_models, environment, expires_at.

        Given fields change (None clears a limit, the environment or the expiry; `allowed_models=()`
        allows every model). A revoked key is final: Conflict (code key_revoked).
        """
        columns = _key_changes(changes)
        if not columns:
            return await self.get_api_key(key_id)
        assignments = ", ".join(f"{column} = ?" for column in columns)
        # One statement: a revocation racing this update wins, never half of each.
        row = await self._db.fetchone(
            f"UPDATE api_keys SET {assignments} WHERE id = ? AND status = 'active' RETURNING *",
            (*columns.values(), key_id),
        )
        if row is None:
            key = await self.get_api_key(key_id)
            raise Conflict(f"API key {key.id!r} is {key.status}: it can no longer be changed", code="key_revoked",
                           param="key_id")
        return key_from_row(row)

    # registry: models -----------------------------------------------------------------

    async def create_model(
        self,
        name: str,
        environment: str,
        *,
        input_price: float = 0.0,
        output_price: float = 0.0,
        max_tokens: int = 1024,
        fallbacks: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        status: str = "active",
    ) -> Model:
        now = self._now()
        model = Model(
            id=ids.new_id(ids.MODEL),
            name=check.name("name", name),
            environment=check.name("environment", environment),
            status=check.choice("status", status, MODEL_STATUSES),
            input_price=check.price("input_price", input_price),
            output_price=check.price("output_price", output_price),
            max_tokens=check.integer("max_tokens", max_tokens, minimum=1),
            fallbacks=check.strings("fallbacks", fallbacks),
            metadata=check.json_object("metadata", metadata or {}),
            revision=1,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self._db.transaction() as tx:
                await tx.execute(
                    "INSERT INTO models (id, name, environment, status, input_price, output_price, max_tokens,"
                    " fallbacks, metadata, revision, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (model.id, model.name, model.environment, model.status, model.input_price, model.output_price,
                     model.max_tokens, encode_json(list(model.fallbacks)), encode_json(model.metadata),
                     model.revision, encode_time(now), encode_time(now)),
                )
                await tx.execute(_BUMP_REGISTRY)
        except UniqueViolation as e:
            raise Conflict(f"model {name!r} already exists in environment {environment!r}", param="name") from e
        return model

    async def _model_row(self, session: Session, name: str, environment: str) -> Row:
        row = await session.fetchone("SELECT * FROM models WHERE name = ? AND environment = ?", (name, environment))
        if row is None:
            raise NotFound(f"model {name!r} in environment {environment!r} not found", param="model")
        return row

    async def _model_row_by_id(self, session: Session, model_id: str) -> Row:
        row = await session.fetchone("SELECT * FROM models WHERE id = ?", (model_id,))
        if row is None:
            raise NotFound(f"model {model_id!r} not found", param="model_id")
        return row

    async def get_model(self, name: str, environment: str) -> Model:
        return model_from_row(await self._model_row(self._db, name, environment))

    async def get_model_by_id(self, model_id: str) -> Model:
        return model_from_row(await self._model_row_by_id(self._db, model_id))

    async def list_models(self, environment: str | None = None) -> list[Model]:
        if environment is None:
            rows = await self._db.fetchall("SELECT * FROM models ORDER BY name, environment")
        else:
            rows = await self._db.fetchall("SELECT * FROM models WHERE environment = ? ORDER BY name", (environment,))
        return [model_from_row(r) for r in rows]

    async def update_model(self, name: str, environment: str, **changes: Any) -> Model:
        """Change any of status, input_price, output_price, max_tokens, fallbacks, metadata (None keeps).

        Bumps the model's revision when anything is given; InvalidRequest names an unknown field.
        """
        columns = _model_changes(changes)
        async with self._db.transaction() as tx:
            row = await self._model_row(tx, name, environment)
            if not columns:
                return model_from_row(row)
            assignments = "".join(f"{column} = ?, " for column in columns)
            updated = await tx.fetchone(
                f"UPDATE models SET {assignments}revision = revision + 1, updated_at = ? WHERE id = ? RETURNING *",
                (*columns.values(), encode_time(self._now()), row["id"]),
            )
            await tx.execute(_BUMP_REGISTRY)
        assert updated is not None  # the row was read in this transaction
        return model_from_row(updated)

    async def delete_model(self, name: str, environment: str) -> None:
        """Remove the model; its endpoints go with it (ON DELETE CASCADE)."""
        async with self._db.transaction() as tx:
            if not await tx.execute("DELETE FROM models WHERE name = ? AND environment = ?", (name, environment)):
                raise NotFound(f"model {name!r} in environment {environment!r} not found", param="model")
            await tx.execute(_BUMP_REGISTRY)

    # registry: endpoints --------------------------------------------------------------

    async def add_endpoint(
        self,
        model_id: str,
        url: str,
        *,
        release: str = "stable",
        weight: int = 100,
        status: str = "ready",
        mirror_percent: float = 0.0,
    ) -> Endpoint:
        """Conflict if the model already has an endpoint with this url (trailing '/' ignored)."""
        endpoint = Endpoint(
            id=ids.new_id(ids.ENDPOINT),
            model_id=model_id,
            url=check.url("url", url),
            release=check.name("release", release),
            weight=check.integer("weight", weight),
            status=check.choice("status", status, ENDPOINT_STATUSES),
            last_health=None,
            last_checked_at=None,
            created_at=self._now(),
            mirror_percent=check.percent("mirror_percent", mirror_percent),
        )
        async with self._db.transaction() as tx:
            model = await self._model_row_by_id(tx, model_id)
            try:
                await tx.execute(
                    "INSERT INTO endpoints (id, model_id, url, release, weight, status, created_at, mirror_percent)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (endpoint.id, model_id, endpoint.url, endpoint.release, endpoint.weight, endpoint.status,
                     encode_time(endpoint.created_at), endpoint.mirror_percent),
                )
            except UniqueViolation as e:
                raise Conflict(
                    f"endpoint {endpoint.url!r} already exists for model {model['name']!r} "
                    f"in environment {model['environment']!r}",
                    param="url",
                ) from e
            except ForeignKeyViolation as e:
                raise NotFound(f"model {model_id!r} not found", param="model_id") from e
            await tx.execute(_BUMP_REGISTRY)
        return endpoint

    async def get_endpoint(self, endpoint_id: str) -> Endpoint:
        row = await self._db.fetchone("SELECT * FROM endpoints WHERE id = ?", (endpoint_id,))
        if row is None:
            raise NotFound(f"endpoint {endpoint_id!r} not found", param="endpoint_id")
        return endpoint_from_row(row)

    async def list_endpoints(self, model_id: str | None = None) -> list[Endpoint]:
        """Endpoints of one model (NotFound if unknown), or every endpoint."""
        if model_id is None:
            rows = await self._db.fetchall("SELECT * FROM endpoints ORDER BY model_id, created_at, id")
        else:
            await self._model_row_by_id(self._db, model_id)
            rows = await self._db.fetchall(
                "SELECT * FROM endpoints WHERE model_id = ? ORDER BY created_at, id", (model_id,)
            )
        return [endpoint_from_row(r) for r in rows]

    async def update_endpoint(
        self,
        endpoint_id: str,
        *,
        weight: int | None = None,
        status: str | None = None,
        release: str | None = None,
        mirror_percent: float | None = None,
    ) -> Endpoint:
        """Change the given fields (None keeps the current value)."""
        changes: dict[str, Any] = {}
        if weight is not None:
            changes["weight"] = check.integer("weight", weight)
        if status is not None:
            changes["status"] = check.choice("status", status, ENDPOINT_STATUSES)
        if release is not None:
            changes["release"] = check.name("release", release)
        if mirror_percent is not None:
            changes["mirror_percent"] = check.percent("mirror_percent", mirror_percent)
        if not changes:
            return await self.get_endpoint(endpoint_id)
        assignments = ", ".join(f"{column} = ?" for column in changes)
        async with self._db.transaction() as tx:
            row = await tx.fetchone(
                f"UPDATE endpoints SET {assignments} WHERE id = ? RETURNING *", (*changes.values(), endpoint_id)
            )
            if row is None:
                raise NotFound(f"endpoint {endpoint_id!r} not found", param="endpoint_id")
            await tx.execute(_BUMP_REGISTRY)
        return endpoint_from_row(row)

    async def record_health(
        self, endpoint_id: str, *, status: str | None, last_health: str, checked_at: datetime
    ) -> None:
        """Write a probe result back (status None keeps the current status).

        Only a status change bumps the registry revision: probes run every few seconds.
        """
        if status is not None:
            check.choice("status", status, ENDPOINT_STATUSES)
        checked = encode_time(check.aware_time("checked_at", checked_at))
        if not isinstance(last_health, str):
            raise InvalidRequest(f"last_health must be a string, got {last_health!r}", param="last_health")
        async with self._db.transaction() as tx:
            current = await tx.fetchone("SELECT status FROM endpoints WHERE id = ?", (endpoint_id,))
            if current is None:
                raise NotFound(f"endpoint {endpoint_id!r} not found", param="endpoint_id")
            new_status = current["status"] if status is None else status
            await tx.execute(
                "UPDATE endpoints SET status = ?, last_health = ?, last_checked_at = ? WHERE id = ?",
                (new_status, last_health, checked, endpoint_id),
            )
            if new_status != current["status"]:
                await tx.execute(_BUMP_REGISTRY)

    async def delete_endpoint(self, endpoint_id: str) -> None:
        async with self._db.transaction() as tx:
            if not await tx.execute("DELETE FROM endpoints WHERE id = ?", (endpoint_id,)):
                raise NotFound(f"endpoint {endpoint_id!r} not found", param="endpoint_id")
            await tx.execute(_BUMP_REGISTRY)

    async def registry(self, environment: str | None = None) -> list[RegistryEntry]:
        """Every model with its endpoints, in two queries (the data plane's snapshot source)."""
        if environment is None:
            model_rows = await self._db.fetchall("SELECT * FROM models ORDER BY name, environment")
            endpoint_rows = await self._db.fetchall("SELECT * FROM endpoints ORDER BY created_at, id")
        else:
            model_rows = await self._db.fetchall(
                "SELECT * FROM models WHERE environment = ? ORDER BY name", (environment,)
            )
            endpoint_rows = await self._db.fetchall(
                "SELECT e.* FROM endpoints e JOIN models m ON m.id = e.model_id WHERE m.environment = ?"
                " ORDER BY e.created_at, e.id",
                (environment,),
            )
        by_model: dict[str, list[Endpoint]] = {row["id"]: [] for row in model_rows}
        for row in endpoint_rows:
            # An endpoint added between the two queries has no model here yet; the next snapshot has it.
            if row["model_id"] in by_model:
                by_model[row["model_id"]].append(endpoint_from_row(row))
        return [RegistryEntry(model_from_row(row), tuple(by_model[row["id"]])) for row in model_rows]

    # budgets --------------------------------------------------------------------------

    async def set_budget(
        self, org_id: str, *, limit_micros: int, period: str, soft_limit_pct: int = 80, key_id: str | None = None
    ) -> Budget:
        """Create or replace the budget of (org, key); the org is given by id or name."""
        limit = check.integer("limit_micros", limit_micros, maximum=check.MAX_MICROS)
        period = check.choice("period", period, BUDGET_PERIODS)
        soft = check.integer("soft_limit_pct", soft_limit_pct, maximum=100)
        now = encode_time(self._now())
        async with self._db.transaction() as tx:
            org = await self._org_row(tx, org_id)
            if key_id is not None:
                key = await tx.fetchone("SELECT org_id FROM api_keys WHERE id = ?", (key_id,))
                if key is None or key["org_id"] != org["id"]:
                    raise NotFound(f"API key {key_id!r} not found in organization {org['name']!r}", param="key_id")
            try:
                row = await tx.fetchone(
                    "INSERT INTO budgets (id, org_id, key_id, limit_micros, period, soft_limit_pct, created_at,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (org_id, COALESCE(key_id, '')) DO UPDATE SET limit_micros = excluded.limit_micros,"
                    " period = excluded.period, soft_limit_pct = excluded.soft_limit_pct,"
                    " updated_at = excluded.updated_at RETURNING *",
                    (ids.new_id(ids.BUDGET), org["id"], key_id, limit, period, soft, now, now),
                )
            except ForeignKeyViolation as e:
                raise NotFound(f"organization {org_id!r} or API key {key_id!r} not found", param="org") from e
        assert row is not None  # RETURNING always yields the inserted or updated row
        return budget_from_row(row)

    async def list_budgets(self, org_id: str | None = None) -> list[Budget]:
        """Budgets of one org (id or name; NotFound if unknown), or of every org."""
        order = "ORDER BY org_id, COALESCE(key_id, ''), id"
        if org_id is None:
            rows = await self._db.fetchall(f"SELECT * FROM budgets {order}")
        else:
            org = await self._org_row(self._db, org_id)
            rows = await self._db.fetchall(f"SELECT * FROM budgets WHERE org_id = ? {order}", (org["id"],))
        return [budget_from_row(r) for r in rows]

    async def get_budget(self, budget_id: str) -> Budget:
        row = await self._db.fetchone("SELECT * FROM budgets WHERE id = ?", (budget_id,))
        if row is None:
            raise NotFound(f"budget {budget_id!r} not found", param="budget_id")
        return budget_from_row(row)

    async def delete_budget(self, budget_id: str) -> None:
        if not await self._db.execute("DELETE FROM budgets WHERE id = ?", (budget_id,)):
            raise NotFound(f"budget {budget_id!r} not found", param="budget_id")
