"""The control-plane store contract: one async interface, SQLite and PostgreSQL behind it.

Every method raises `gateway.errors` types: NotFound for unknown ids/names, Conflict for
duplicates, InvalidRequest for values the schema refuses. Ids are short prefixed strings
(`org_…`, `key_…`, `mdl_…`, `ep_…`, `bud_…`, `ro_…`). Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from gateway.store.models import (
    ApiKey,
    AuditEntry,
    Budget,
    Endpoint,
    Model,
    Organization,
    RegistryEntry,
    Release,
    ReleaseRevision,
    Rollout,
    RolloutEvent,
)


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
    async def update_org(self, id_or_name: str, *, rpm_limit: int | None = None, tpm_limit: int | None = None) -> Organization: ...

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
    ) -> ApiKey: ...
    async def get_api_key(self, key_id: str) -> ApiKey: ...
    async def find_api_key_by_hash(self, key_hash: str) -> ApiKey | None: ...
    async def list_api_keys(self, org_id: str | None = None) -> list[ApiKey]: ...
    async def revoke_api_key(self, key_id: str) -> ApiKey: ...

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
    async def delete_budget(self, budget_id: str) -> None: ...

    # audit
    async def add_audit(self, actor: str, action: str, target: str, detail: dict[str, Any] | None = None) -> None: ...
    async def list_audit(self, *, limit: int = 100) -> list[AuditEntry]: ...

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
