"""Users, service accounts, personal admin tokens and OAuth2 signing keys (a mixin of `SqlStore`).

Secrets never reach the store: callers pass SHA-256 digests. Users and service accounts are named by
id or name, like organizations; an `org_id` of None makes one global.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from gateway.auth.principal import ROLES
from gateway.errors import Conflict, NotFound
from gateway.store import ids
from gateway.store import validation as check
from gateway.store.db import Database, ForeignKeyViolation, Row, Session, UniqueViolation
from gateway.store.models import PRINCIPAL_STATUSES, AdminToken, ServiceAccount, SigningKey, User
from gateway.store.rows import (
    admin_token_from_row,
    encode_json,
    encode_time,
    service_account_from_row,
    signing_key_from_row,
    user_from_row,
)


def _changes(role: str | None, status: str | None) -> dict[str, Any]:
    """The role/status columns to set (None keeps), validated."""
    out: dict[str, Any] = {}
    if role is not None:
        out["role"] = check.choice("role", role, ROLES)
    if status is not None:
        out["status"] = check.choice("status", status, PRINCIPAL_STATUSES)
    return out


class IdentityStore:
    """The identity part of `SqlStore` (which provides `_db`, `_now` and `_org_row`)."""

    _db: Database
    _now: Callable[[], datetime]
    _org_row: Callable[[Session, str], Awaitable[Row]]

    async def _optional_org_id(self, session: Session, org_ref: str | None) -> str | None:
        return None if org_ref is None else (await self._org_row(session, org_ref))["id"]

    # users ----------------------------------------------------------------------------

    async def _user_row(self, session: Session, id_or_name: str) -> Row:
        rows = await session.fetchall("SELECT * FROM users WHERE id = ? OR name = ?", (id_or_name, id_or_name))
        if not rows:
            raise NotFound(f"user {id_or_name!r} not found", param="user")
        return next((r for r in rows if r["id"] == id_or_name), rows[0])

    async def create_user(self, name: str, *, role: str, org_id: str | None = None,
                          email: str | None = None) -> User:
        name = check.name("name", name)
        role = check.choice("role", role, ROLES)
        email = None if email is None else check.name("email", email)
        now = self._now()
        async with self._db.transaction() as tx:
            user = User(id=ids.new_id(ids.USER), name=name, email=email, org_id=await self._optional_org_id(tx, org_id),
                        role=role, status="active", created_at=now, updated_at=now)
            try:
                await tx.execute(
                    "INSERT INTO users (id, name, email, org_id, role, status, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (user.id, user.name, user.email, user.org_id, user.role, user.status, encode_time(now),
                     encode_time(now)),
                )
            except UniqueViolation as e:
                raise Conflict(f"user {name!r} already exists", param="name") from e
            except ForeignKeyViolation as e:  # the org was deleted meanwhile
                raise NotFound(f"organization {org_id!r} not found", param="org") from e
        return user

    async def get_user(self, id_or_name: str) -> User:
        return user_from_row(await self._user_row(self._db, id_or_name))

    async def list_users(self, org_id: str | None = None) -> list[User]:
        db = self._db
        if org_id is None:
            rows = await db.fetchall("SELECT * FROM users ORDER BY name")
        else:
            org = await self._org_row(db, org_id)
            rows = await db.fetchall("SELECT * FROM users WHERE org_id = ? ORDER BY name", (org["id"],))
        return [user_from_row(r) for r in rows]

    async def update_user(self, id_or_name: str, *, role: str | None = None, status: str | None = None,
                          email: str | None = None) -> User:
        columns = _changes(role, status)
        if email is not None:
            columns["email"] = check.name("email", email, allow_empty=True) or None
        async with self._db.transaction() as tx:
            row = await self._user_row(tx, id_or_name)
            if columns:
                assignments = "".join(f"{column} = ?, " for column in columns)
                row = await tx.fetchone(f"UPDATE users SET {assignments}updated_at = ? WHERE id = ? RETURNING *",
                                        (*columns.values(), encode_time(self._now()), row["id"])) or row
        return user_from_row(row)

    # service accounts -----------------------------------------------------------------

    async def _service_account_row(self, session: Session, id_or_name: str) -> Row:
        rows = await session.fetchall("SELECT * FROM service_accounts WHERE id = ? OR name = ?",
                                      (id_or_name, id_or_name))
        if not rows:
            raise NotFound(f"service account {id_or_name!r} not found", param="service_account")
        return next((r for r in rows if r["id"] == id_or_name), rows[0])

    async def create_service_account(self, name: str, *, role: str, client_id: str, secret_hash: str,
                                     org_id: str | None = None) -> ServiceAccount:
        name = check.name("name", name)
        role = check.choice("role", role, ROLES)
        client_id = check.name("client_id", client_id)
        secret_hash = check.name("secret_hash", secret_hash)
        now = self._now()
        async with self._db.transaction() as tx:
            account = ServiceAccount(
                id=ids.new_id(ids.SERVICE_ACCOUNT), name=name, org_id=await self._optional_org_id(tx, org_id),
                role=role, status="active", client_id=client_id, secret_hash=secret_hash, secret_rotated_at=now,
                created_at=now, updated_at=now,
            )
            try:
                await tx.execute(
                    "INSERT INTO service_accounts (id, name, org_id, role, status, client_id, secret_hash,"
                    " secret_rotated_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (account.id, name, account.org_id, role, account.status, client_id, secret_hash,
                     encode_time(now), encode_time(now), encode_time(now)),
                )
            except UniqueViolation as e:
                raise Conflict(f"service account {name!r} already exists (or its client id is taken)",
                               param="name") from e
            except ForeignKeyViolation as e:
                raise NotFound(f"organization {org_id!r} not found", param="org") from e
        return account

    async def get_service_account(self, id_or_name: str) -> ServiceAccount:
        return service_account_from_row(await self._service_account_row(self._db, id_or_name))

    async def find_service_account_by_client_id(self, client_id: str) -> ServiceAccount | None:
        row = await self._db.fetchone("SELECT * FROM service_accounts WHERE client_id = ?", (client_id,))
        return None if row is None else service_account_from_row(row)

    async def list_service_accounts(self, org_id: str | None = None) -> list[ServiceAccount]:
        db = self._db
        if org_id is None:
            rows = await db.fetchall("SELECT * FROM service_accounts ORDER BY name")
        else:
            org = await self._org_row(db, org_id)
            rows = await db.fetchall("SELECT * FROM service_accounts WHERE org_id = ? ORDER BY name", (org["id"],))
        return [service_account_from_row(r) for r in rows]

    async def update_service_account(self, id_or_name: str, *, role: str | None = None,
                                     status: str | None = None) -> ServiceAccount:
        return await self._set_service_account(id_or_name, _changes(role, status))

    async def set_service_account_secret(self, id_or_name: str, secret_hash: str) -> ServiceAccount:
        now = encode_time(self._now())
        return await self._set_service_account(
            id_or_name, {"secret_hash": check.name("secret_hash", secret_hash), "secret_rotated_at": now})

    async def _set_service_account(self, id_or_name: str, columns: dict[str, Any]) -> ServiceAccount:
        async with self._db.transaction() as tx:
            row = await self._service_account_row(tx, id_or_name)
            if columns:
                assignments = "".join(f"{column} = ?, " for column in columns)
                row = await tx.fetchone(
                    f"UPDATE service_accounts SET {assignments}updated_at = ? WHERE id = ? RETURNING *",
                    (*columns.values(), encode_time(self._now()), row["id"])) or row
        return service_account_from_row(row)

    # personal admin tokens ------------------------------------------------------------

    async def create_admin_token(self, user_id: str, *, name: str, token_hash: str, prefix: str,
                                 expires_at: datetime) -> AdminToken:
        token = AdminToken(
            id=ids.new_id(ids.ADMIN_TOKEN), user_id=user_id, name=check.name("name", name),
            prefix=check.name("prefix", prefix), token_hash=check.name("token_hash", token_hash),
            expires_at=check.aware_time("expires_at", expires_at).astimezone(UTC), revoked_at=None,
            last_used_at=None, created_at=self._now(),
        )
        try:
            await self._db.execute(
                "INSERT INTO admin_tokens (id, user_id, name, prefix, token_hash, expires_at, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (token.id, user_id, token.name, token.prefix, token.token_hash, encode_time(token.expires_at),
                 encode_time(token.created_at)),
            )
        except UniqueViolation as e:
            raise Conflict("an admin token with this hash already exists", param="token_hash") from e
        except ForeignKeyViolation as e:
            raise NotFound(f"user {user_id!r} not found", param="user") from e
        return token

    async def get_admin_token(self, token_id: str) -> AdminToken:
        row = await self._db.fetchone("SELECT * FROM admin_tokens WHERE id = ?", (token_id,))
        if row is None:
            raise NotFound(f"admin token {token_id!r} not found", param="token_id")
        return admin_token_from_row(row)

    async def find_admin_token_by_hash(self, token_hash: str) -> AdminToken | None:
        row = await self._db.fetchone("SELECT * FROM admin_tokens WHERE token_hash = ?", (token_hash,))
        return None if row is None else admin_token_from_row(row)

    async def list_admin_tokens(self, user_id: str) -> list[AdminToken]:
        rows = await self._db.fetchall(
            "SELECT * FROM admin_tokens WHERE user_id = ? ORDER BY created_at, id", (user_id,))
        return [admin_token_from_row(r) for r in rows]

    async def revoke_admin_token(self, token_id: str) -> AdminToken:
        row = await self._db.fetchone(
            "UPDATE admin_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ? RETURNING *",
            (encode_time(self._now()), token_id))
        if row is None:
            raise NotFound(f"admin token {token_id!r} not found", param="token_id")
        return admin_token_from_row(row)

    async def touch_admin_token(self, token_id: str, used_at: datetime) -> None:
        await self._db.execute("UPDATE admin_tokens SET last_used_at = ? WHERE id = ?",
                               (encode_time(check.aware_time("used_at", used_at)), token_id))

    # OAuth2 signing keys --------------------------------------------------------------

    async def list_signing_keys(self) -> list[SigningKey]:
        rows = await self._db.fetchall("SELECT * FROM signing_keys ORDER BY created_at DESC, kid")
        return [signing_key_from_row(r) for r in rows]

    async def _insert_signing_key(self, session: Session, kid: str, algorithm: str, private_pem: str,
                                  public_jwk: dict[str, Any]) -> SigningKey:
        key = SigningKey(kid=check.name("kid", kid), algorithm=check.name("algorithm", algorithm),
                         private_pem=check.text("private_pem", private_pem),
                         public_jwk=check.json_object("public_jwk", public_jwk), created_at=self._now(),
                         retired_at=None)
        await session.execute(
            "INSERT INTO signing_keys (kid, algorithm, private_pem, public_jwk, created_at) VALUES (?, ?, ?, ?, ?)",
            (key.kid, key.algorithm, key.private_pem, encode_json(key.public_jwk), encode_time(key.created_at)),
        )
        return key

    async def add_signing_key(self, kid: str, *, algorithm: str, private_pem: str,
                              public_jwk: dict[str, Any]) -> SigningKey:
        db = self._db
        try:
            # Its own statement, not a transaction: a unique violation must not abort anything else.
            return await self._insert_signing_key(db, kid, algorithm, private_pem, public_jwk)
        except UniqueViolation:
            row = await db.fetchone("SELECT * FROM signing_keys WHERE algorithm = ? AND retired_at IS NULL",
                                    (algorithm,))
            if row is None:  # the winner was rotated away between the two statements: try once more
                return await self._insert_signing_key(db, kid, algorithm, private_pem, public_jwk)
            return signing_key_from_row(row)

    async def rotate_signing_key(self, kid: str, *, algorithm: str, private_pem: str,
                                 public_jwk: dict[str, Any]) -> SigningKey:
        try:
            async with self._db.transaction() as tx:
                await tx.execute("UPDATE signing_keys SET retired_at = ? WHERE algorithm = ? AND retired_at IS NULL",
                                 (encode_time(self._now()), algorithm))
                return await self._insert_signing_key(tx, kid, algorithm, private_pem, public_jwk)
        except UniqueViolation as e:
            raise Conflict("another signing key rotation happened at the same time; list the keys and retry",
                           code="rotation_in_progress") from e
