"""Control-plane records: plain frozen dataclasses shared by the store, the API and opsctl."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

MODEL_STATUSES = ("active", "disabled")
ENDPOINT_STATUSES = ("ready", "disabled", "draining", "unhealthy")
KEY_STATUSES = ("active", "revoked")
BUDGET_PERIODS = ("daily", "monthly", "total")
RELEASE_DEPLOYERS = ("local", "helm")
RELEASE_TRACKS = ("stable", "canary")
# As Helm names a revision's state.
REVISION_STATUSES = (
    "pending-install", "pending-upgrade", "pending-rollback", "deployed", "superseded", "failed", "uninstalled",
)
ROLLOUT_KINDS = ("canary", "blue-green", "promote")
ROLLOUT_ACTIVE_STATUSES = ("running", "aborting")
ROLLOUT_TERMINAL_STATUSES = ("succeeded", "failed", "aborted")
ROLLOUT_STATUSES = ROLLOUT_ACTIVE_STATUSES + ROLLOUT_TERMINAL_STATUSES
ROLLOUT_EVENT_PHASES = ("started", "progress", "passed", "failed", "skipped", "info")


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple):
        return list(value)
    return value


_TUPLE_FIELDS = frozenset({"allowed_models", "fallbacks", "endpoints"})


class Record:
    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):  # noqa: ANN206 - returns cls
        """Inverse of `to_dict` (for records cached as JSON in Redis)."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name not in data:
                continue
            value = data[f.name]
            if value is not None and (f.name.endswith("_at") or f.name == "ts"):
                value = datetime.fromisoformat(value)
            elif f.name in _TUPLE_FIELDS:
                value = tuple(value or ())
            values[f.name] = value
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Organization(Record):
    id: str
    name: str
    rpm_limit: int | None
    tpm_limit: int | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey(Record):
    """An API key; the secret itself is never stored, only its SHA-256 (`key_hash`)."""

    id: str
    org_id: str
    name: str
    prefix: str  # first characters of the secret, for display ("sk-fg-3f9a…")
    key_hash: str
    status: str
    rpm_limit: int | None
    tpm_limit: int | None
    allowed_models: tuple[str, ...]  # empty = every model
    environment: str | None  # None = the gateway's default environment
    expires_at: datetime | None
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        out = Record.to_dict(self)
        out.pop("key_hash")
        return out


@dataclass(frozen=True, slots=True)
class Model(Record):
    """A registry entry: one model name in one environment."""

    id: str
    name: str
    environment: str
    status: str
    input_price: float  # USD per 1M input tokens
    output_price: float  # USD per 1M output tokens
    max_tokens: int  # default max output tokens when the client sends none
    fallbacks: tuple[str, ...]
    metadata: dict[str, Any]
    revision: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Endpoint(Record):
    id: str
    model_id: str
    url: str
    release: str
    weight: int
    status: str
    last_health: str | None
    last_checked_at: datetime | None
    created_at: datetime
    mirror_percent: float = 0.0  # share (0..100) of the model's live requests copied here as shadow traffic


@dataclass(frozen=True, slots=True)
class Budget(Record):
    """A spend limit for an org, or for one key of it when `key_id` is set."""

    id: str
    org_id: str
    key_id: str | None
    limit_micros: int  # micro-USD
    period: str
    soft_limit_pct: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class AuditEntry(Record):
    id: int
    ts: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReleaseRevision(Record):
    """One revision of a deployer release (Helm-like: a rollback is a new revision too)."""

    release: str
    revision: int
    version: str
    status: str  # one of REVISION_STATUSES
    values: dict[str, Any]
    endpoints: tuple[str, ...]  # URLs the registry routes to while this revision is deployed
    runtime: dict[str, Any]  # deployer facts: pids, ports, log files (local), chart info (helm)
    description: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Release(Record):
    """A deployer release of one model in one environment, with its latest revision flattened in."""

    name: str
    model: str
    environment: str
    deployer: str  # one of RELEASE_DEPLOYERS
    track: str  # one of RELEASE_TRACKS
    revision: int
    version: str
    status: str
    values: dict[str, Any]
    endpoints: tuple[str, ...]
    runtime: dict[str, Any]
    description: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Rollout(Record):
    """A rollout's persisted state machine: the engine resumes from `step` / `phase` / `state`.

    `version_no` is bumped by every write, so two drivers cannot both advance one rollout.
    """

    id: str
    model: str
    environment: str
    version: str
    kind: str  # one of ROLLOUT_KINDS
    playbook: str
    spec: dict[str, Any]
    status: str  # one of ROLLOUT_STATUSES
    step: int
    phase: str
    state: dict[str, Any]
    reason: str | None
    owner: dict[str, Any] | None  # {"host", "pid"} of the driving process
    version_no: int
    created_at: datetime
    updated_at: datetime

    @property
    def active(self) -> bool:
        return self.status in ROLLOUT_ACTIVE_STATUSES


@dataclass(frozen=True, slots=True)
class RolloutEvent(Record):
    """One step event of a rollout (started, progress, passed, ...): its timeline."""

    id: int
    rollout_id: str
    ts: datetime
    step: int
    name: str
    phase: str  # one of ROLLOUT_EVENT_PHASES
    message: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    """A model with its endpoints, as the data plane sees it."""

    model: Model
    endpoints: tuple[Endpoint, ...]
