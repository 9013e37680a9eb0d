"""The control-plane store contract: one async interface, SQLite and PostgreSQL behind it.

Every method raises `gateway.errors` types: NotFound for unknown ids/names, Conflict for
duplicates, InvalidRequest for values the schema refuses. Ids are short prefixed strings
(`org_…`, `key_…`, `mdl_…`, `ep_…`, `bud_…`, `ro_…`). Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from gateway.store.models import (
    AdminToken,
    ApiKey,
    AuditEntry,
    AuditFilter,
    Budget,
    Endpoint,
    Model,
    Organization,
    OwnedObject,
    OwnershipChange,
    RegistryEntry,
    Release,
    ReleaseRevision,
    Rollout,
    RolloutEvent,
    ServiceAccount,
    SigningKey,
    User,
)

if TYPE_CHECKING:
    from gateway.store.sql_exports import ExportJob  # the export jobs' record lives with their SQL


class Store(Protocol):
    backend: str  # "sqlite" | "postgresql"

    async def open(self) -> None:
        """Connect and apply pending migrations (idempotent, safe with concurrent openers)."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise if the database cannot answer a trivial query."""

    async def schema_version(self) -> int: ...

    async def registry_revision(self) -> int:
        """A counter bumped by every model/endpoint write, so the data plane can tell something changed."""

    # organizations
    async def create_org(self, name: str, *, rpm_limit: int | None = None, tpm_limit: int | None = None) -> Organization: ...
    async def get_org(self, id_or_name: str) -> Organization: ...
    async def list_orgs(self) -> list[Organization]: ...
    async def update_org(self, id_or_name: str, *, rpm_limit: int | None = None, tpm_limit: int | None = None,
                         clear: Sequence[str] = ()) -> Organization:
        """None keeps a limit; the limits named in `clear` are removed."""
    async def delete_org(self, id_or_name: str) -> None:
        """Conflict (org_not_empty) while it has active keys, active users or service accounts, or budgets."""

    # api keys (the caller hashes the secret; the store never sees it)
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
        signing_key: str | None = None,  # derived from the secret (gateway/auth/signing.py), never the secret
    ) -> ApiKey: ...
    async def get_api_key(self, key_id: str) -> ApiKey: ...
    async def find_api_key_by_hash(self, key_hash: str) -> ApiKey | None: ...
    async def list_api_keys(self, org_id: str | None = None) -> list[ApiKey]: ...
    async def revoke_api_key(self, key_id: str) -> ApiKey: ...
    async def update_api_key(self, key_id: str, **changes: Any) -> ApiKey:
        """Change name, rpm_limit, tpm_limit, allowed_models, environment, expires_at (None clears a nullable
        one); Conflict (key_revoked) for a revoked key."""

    # registry: models
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
    ) -> Model: ...
    async def get_model(self, name: str, environment: str) -> Model: ...
    async def get_model_by_id(self, model_id: str) -> Model: ...
    async def list_models(self, environment: str | None = None) -> list[Model]: ...
    async def update_model(self, name: str, environment: str, **changes: Any) -> Model:
        """Change any of status, input_price, output_price, max_tokens, fallbacks, metadata; bumps revision."""
    async def delete_model(self, name: str, environment: str) -> None:
        """Remove the model and its endpoints."""

    # registry: endpoints
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
        """Conflict if the model already has an endpoint with this url."""
    async def get_endpoint(self, endpoint_id: str) -> Endpoint: ...
    async def list_endpoints(self, model_id: str | None = None) -> list[Endpoint]: ...
    async def update_endpoint(
        self,
        endpoint_id: str,
        *,
        weight: int | None = None,
        status: str | None = None,
        release: str | None = None,
        mirror_percent: float | None = None,
    ) -> Endpoint: ...
    async def record_health(self, endpoint_id: str, *, status: str | None, last_health: str, checked_at: datetime) -> None:
        """Write a probe result back (status None keeps the current status)."""
    async def delete_endpoint(self, endpoint_id: str) -> None: ...
    async def registry(self, environment: str | None = None) -> list[RegistryEntry]:
        """Every model with its endpoints, in two queries (the data plane's snapshot source)."""

    # budgets
    async def set_budget(
        self, org_id: str, *, limit_micros: int, period: str, soft_limit_pct: int = 80, key_id: str | None = None
    ) -> Budget:
        """Create or replace the budget of (org, key)."""
    async def list_budgets(self, org_id: str | None = None) -> list[Budget]: ...
    async def get_budget(self, budget_id: str) -> Budget: ...
    async def delete_budget(self, budget_id: str) -> None: ...

    # audit (append-only: entries are never changed or deleted)
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
        """Append one entry and return it (with its id and time)."""
    async def list_audit(
        self,
        filters: AuditFilter | None = None,
        *,
        limit: int = 100,
        before_id: int | None = None,
        after_id: int | None = None,
        oldest_first: bool = False,
    ) -> list[AuditEntry]:
        """Up to `limit` matching entries with before_id > id > after_id, newest first (or oldest first).

        Ids only grow, so `before_id` = the last id of a newest-first page (`after_id` of an oldest-first
        one) reads the next page without skipping or repeating an entry, however many are added meanwhile."""

    # releases: one deployer release of a model in an environment, with a Helm-like revision history
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
        """Next revision (max + 1), creating the release on its first; Conflict if the release's
        model/environment/deployer/track differ. `deployed` supersedes the other deployed revisions."""
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
        """Change the given fields (None keeps); `deployed` supersedes the other deployed revisions."""
    async def get_release(self, name: str) -> Release: ...
    async def release_history(self, name: str) -> list[ReleaseRevision]:
        """Oldest first."""
    async def list_releases(
        self, *, model: str | None = None, environment: str | None = None, deployer: str | None = None
    ) -> list[Release]: ...
    async def delete_release(self, name: str) -> None: ...

    # rollouts: the persisted state of the rollout engine
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
        """Conflict (code rollout_in_progress) while another rollout of (model, environment) is active."""
    async def get_rollout(self, rollout_id: str) -> Rollout: ...
    async def list_rollouts(
        self, *, model: str | None = None, environment: str | None = None, active: bool | None = None, limit: int = 50
    ) -> list[Rollout]:
        """Newest first."""
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
        """Compare-and-set on version_no (Conflict rollout_changed); finished rollouts refuse (rollout_finished)."""
    async def add_rollout_event(
        self,
        rollout_id: str,
        *,
        step: int,
        name: str,
        phase: str,
        message: str = "",
        data: dict[str, Any] | None = None,
    ) -> RolloutEvent: ...
    async def list_rollout_events(self, rollout_id: str) -> list[RolloutEvent]:
        """Oldest first."""

    # identity: users, service accounts, personal admin tokens, OAuth2 signing keys (callers hash the secrets).
    # Users and service accounts are named by id or name; `org_id` by org id or name, None for a global one.
    async def create_user(self, name: str, *, role: str, org_id: str | None = None,
                          email: str | None = None) -> User:
        """Conflict if the name is taken; NotFound for an unknown org."""
    async def get_user(self, id_or_name: str) -> User: ...
    async def list_users(self, org_id: str | None = None) -> list[User]:
        """Users of one org, or every user (global ones included) when `org_id` is None."""
    async def update_user(self, id_or_name: str, *, role: str | None = None, status: str | None = None,
                          email: str | None = None) -> User:
        """Change the given fields (None keeps; an empty email clears it)."""
    async def create_service_account(self, name: str, *, role: str, client_id: str, secret_hash: str,
                                     org_id: str | None = None) -> ServiceAccount:
        """Conflict if the name or client id is taken; NotFound for an unknown org."""
    async def get_service_account(self, id_or_name: str) -> ServiceAccount: ...
    async def find_service_account_by_client_id(self, client_id: str) -> ServiceAccount | None: ...
    async def list_service_accounts(self, org_id: str | None = None) -> list[ServiceAccount]: ...
    async def update_service_account(self, id_or_name: str, *, role: str | None = None,
                                     status: str | None = None) -> ServiceAccount: ...
    async def set_service_account_secret(self, id_or_name: str, secret_hash: str) -> ServiceAccount:
        """Replace the secret; access tokens issued before now are refused from now on (`secret_rotated_at`)."""
    async def create_admin_token(self, user_id: str, *, name: str, token_hash: str, prefix: str,
                                 expires_at: datetime) -> AdminToken: ...
    async def get_admin_token(self, token_id: str) -> AdminToken: ...
    async def find_admin_token_by_hash(self, token_hash: str) -> AdminToken | None:
        """The token with this hash whatever its state (the caller decides), or None."""
    async def list_admin_tokens(self, user_id: str) -> list[AdminToken]: ...
    async def revoke_admin_token(self, token_id: str) -> AdminToken:
        """Idempotent: a second revocation keeps the first time."""
    async def touch_admin_token(self, token_id: str, used_at: datetime) -> None:
        """Record when the token was last used."""
    async def list_signing_keys(self) -> list[SigningKey]:
        """Newest first, retired ones included."""
    async def add_signing_key(self, kid: str, *, algorithm: str, private_pem: str,
                              public_jwk: dict[str, Any]) -> SigningKey:
        """The first key of `algorithm`; when another process added one first, that one is returned instead."""
    async def rotate_signing_key(self, kid: str, *, algorithm: str, private_pem: str,
                                 public_jwk: dict[str, Any]) -> SigningKey:
        """Retire the current key of `algorithm` and make this one current, atomically."""

    # declarative config: which objects an applied config (its `owner` label) owns, by id
    async def list_owned(self, *, owner: str | None = None, kind: str | None = None) -> list[OwnedObject]:
        """By owner, kind and name."""
    async def replace_owned(
        self, owner: str, objects: Sequence[tuple[str, str, str]], *, adopt: bool = False
    ) -> OwnershipChange:
        """Make the (kind, object_id, name) triples exactly what `owner` owns; objects another owner holds are
        a Conflict (owned_by_another_config) naming them unless `adopt`."""

    # analytics export jobs (gateway/store/sql_exports.py: leases, attempts, idempotency)
    async def create_export(self, job_id: str, *, org_id: str | None, spec: dict[str, Any], created_by: str,
                            idempotency_key: str | None = None, request_hash: str | None = None,
                            max_active: int | None = None) -> tuple[ExportJob, bool]:
        """Queue a job; (the job, whether it is new). Conflict: idempotency_key_reused, too_many_exports."""
    async def get_export(self, job_id: str) -> ExportJob: ...
    async def list_exports(self, *, org_id: str | None = None, all_orgs: bool = False, status: str | None = None,
                           limit: int = 100, before: tuple[datetime, str] | None = None) -> list[ExportJob]:
        """Newest first, paged by (created_at, id)."""
    async def claim_export(self, owner: str, *, lease_s: float, max_attempts: int) -> ExportJob | None:
        """Atomically take the oldest queued (or lease-expired) job; None when there is none."""
    async def renew_export(self, job_id: str, owner: str, *, lease_s: float) -> bool: ...
    async def finish_export(self, job_id: str, owner: str, *, object_path: str, rows: int, requests: int,
                            cost_micros: int, size_bytes: int, sha256: str) -> ExportJob | None: ...
    async def fail_export(self, job_id: str, owner: str, error: str, *,
                          retry_after_s: float | None = None) -> ExportJob | None: ...
    async def release_export(self, job_id: str, owner: str) -> bool: ...
