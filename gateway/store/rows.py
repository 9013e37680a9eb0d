"""Column codecs and row → record mapping, shared by both SQL dialects.

Times are stored as ISO-8601 UTC text with microseconds (so they sort as text) and JSON
as TEXT, which both SQLite and PostgreSQL hold without dialect-specific types.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.store.db import Row
from gateway.store.models import (
    AdminToken,
    ApiKey,
    AuditEntry,
    Budget,
    Endpoint,
    Model,
    Organization,
    OwnedObject,
    Release,
    ReleaseRevision,
    Rollout,
    RolloutEvent,
    ServiceAccount,
    SigningKey,
    User,
)


def encode_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def decode_time(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def decode_optional_time(text: str | None) -> datetime | None:
    return None if text is None else decode_time(text)


def encode_json(value: Any) -> str:
    return orjson.dumps(value).decode()


def decode_json(text: str) -> Any:
    return orjson.loads(text)


def org_from_row(row: Row) -> Organization:
    return Organization(
        id=row["id"],
        name=row["name"],
        rpm_limit=row["rpm_limit"],
        tpm_limit=row["tpm_limit"],
        created_at=decode_time(row["created_at"]),
    )


def key_from_row(row: Row) -> ApiKey:
    return ApiKey(
        id=row["id"],
        org_id=row["org_id"],
        name=row["name"],
        prefix=row["prefix"],
        key_hash=row["key_hash"],
        status=row["status"],
        rpm_limit=row["rpm_limit"],
        tpm_limit=row["tpm_limit"],
        allowed_models=tuple(decode_json(row["allowed_models"])),
        environment=row["environment"],
        expires_at=decode_optional_time(row["expires_at"]),
        created_at=decode_time(row["created_at"]),
        require_signature=bool(row["require_signature"]),  # SQLite answers 0/1, PostgreSQL a boolean
        signing_key=row["signing_key"],
    )


def model_from_row(row: Row) -> Model:
    return Model(
        id=row["id"],
        name=row["name"],
        environment=row["environment"],
        status=row["status"],
        input_price=float(row["input_price"]),
        output_price=float(row["output_price"]),
        max_tokens=row["max_tokens"],
        fallbacks=tuple(decode_json(row["fallbacks"])),
        metadata=decode_json(row["metadata"]),
        revision=row["revision"],
        created_at=decode_time(row["created_at"]),
        updated_at=decode_time(row["updated_at"]),
    )


def endpoint_from_row(row: Row) -> Endpoint:
    return Endpoint(
        id=row["id"],
        model_id=row["model_id"],
        url=row["url"],
        release=row["release"],
        weight=row["weight"],
        status=row["status"],
        last_health=row["last_health"],
        last_checked_at=decode_optional_time(row["last_checked_at"]),
        created_at=decode_time(row["created_at"]),
        mirror_percent=float(row["mirror_percent"]),
    )


def budget_from_row(row: Row) -> Budget:
    return Budget(
        id=row["id"],
        org_id=row["org_id"],
        key_id=row["key_id"],
        limit_micros=row["limit_micros"],
        period=row["period"],
        soft_limit_pct=row["soft_limit_pct"],
        created_at=decode_time(row["created_at"]),
        updated_at=decode_time(row["updated_at"]),
    )


def audit_from_row(row: Row) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        ts=decode_time(row["ts"]),
        actor=row["actor"],
        action=row["action"],
        target=row["target"],
        detail=decode_json(row["detail"]),
        actor_type=row["actor_type"],
        actor_id=row["actor_id"],
        org_id=row["org_id"],
        request_id=row["request_id"],
        source_ip=row["source_ip"],
        source=row["source"],
        before=_optional_json(row["before_json"]),
        after=_optional_json(row["after_json"]),
    )


def _optional_json(text: str | None) -> Any:
    return None if text is None else decode_json(text)


def revision_from_row(row: Row) -> ReleaseRevision:
    return ReleaseRevision(
        release=row["release"],
        revision=row["revision"],
        version=row["version"],
        status=row["status"],
        values=decode_json(row["chart_values"]),
        endpoints=tuple(decode_json(row["endpoints"])),
        runtime=decode_json(row["runtime"]),
        description=row["description"],
        created_at=decode_time(row["created_at"]),
        updated_at=decode_time(row["updated_at"]),
    )


def release_from_rows(release: Row, latest: Row) -> Release:
    """The release row with its latest revision's fields flattened in."""
    revision = revision_from_row(latest)
    return Release(
        name=release["name"],
        model=release["model"],
        environment=release["environment"],
        deployer=release["deployer"],
        track=release["track"],
        revision=revision.revision,
        version=revision.version,
        status=revision.status,
        values=revision.values,
        endpoints=revision.endpoints,
        runtime=revision.runtime,
        description=revision.description,
        created_at=decode_time(release["created_at"]),
        updated_at=decode_time(release["updated_at"]),
    )


def rollout_from_row(row: Row) -> Rollout:
    return Rollout(
        id=row["id"],
        model=row["model"],
        environment=row["environment"],
        version=row["version"],
        kind=row["kind"],
        playbook=row["playbook"],
        spec=decode_json(row["spec"]),
        status=row["status"],
        step=row["step"],
        phase=row["phase"],
        state=decode_json(row["state"]),
        reason=row["reason"],
        owner=None if row["owner"] is None else decode_json(row["owner"]),
        version_no=row["version_no"],
        created_at=decode_time(row["created_at"]),
        updated_at=decode_time(row["updated_at"]),
    )


def rollout_event_from_row(row: Row) -> RolloutEvent:
    return RolloutEvent(
        id=row["id"],
        rollout_id=row["rollout_id"],
        ts=decode_time(row["ts"]),
        step=row["step"],
        name=row["name"],
        phase=row["phase"],
        message=row["message"],
        data=decode_json(row["data"]),
    )


def user_from_row(row: Row) -> User:
    return User(
        id=row["id"],
        name=row["name"],
        email=row["email"],
        org_id=row["org_id"],
        role=row["role"],
        status=row["status"],
        created_at=decode_time(row["created_at"]),
        updated_at=decode_time(row["updated_at"]),
    )


def service_account_from_row(row: Row) -> ServiceAccount:
    return ServiceAccount(
        id=row["id"],
        name=row["name"],
        org_id=row["org_id"],
        role=row["role"],
        status=row["status"],
        client_id=row["client_id"],
        secret_hash=row["secret_hash"],
        secret_rotated_at=decode_time(row["secret_rotated_at"]),
        created_at=decode_time(row["created_at"]),
        updated_at=decode_time(row["updated_at"]),
    )


def admin_token_from_row(row: Row) -> AdminToken:
    return AdminToken(
        id=row["id"],
        user_id=row["user_id"],
        name=row["name"],
        prefix=row["prefix"],
        token_hash=row["token_hash"],
        expires_at=decode_time(row["expires_at"]),
        revoked_at=decode_optional_time(row["revoked_at"]),
        last_used_at=decode_optional_time(row["last_used_at"]),
        created_at=decode_time(row["created_at"]),
    )


def signing_key_from_row(row: Row) -> SigningKey:
    return SigningKey(
        kid=row["kid"],
        algorithm=row["algorithm"],
        private_pem=row["private_pem"],
        public_jwk=decode_json(row["public_jwk"]),
        created_at=decode_time(row["created_at"]),
        retired_at=decode_optional_time(row["retired_at"]),
    )


def owned_from_row(row: Row) -> OwnedObject:
    return OwnedObject(
        kind=row["kind"],
        object_id=row["object_id"],
        name=row["name"],
        owner=row["owner"],
        updated_at=decode_time(row["updated_at"]),
    )
