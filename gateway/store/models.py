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
    """An API key; the secret itself is never stored, only its SHA-256 (`key_hash`).

    A key with `require_signature` refuses bearer use and signs its requests instead; `signing_key`
    (derived from the secret, see gateway/auth/signing.py) is stored for those keys only.
    """

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
    require_signature: bool = False
    signing_key: str | None = None  # hex HMAC key; never leaves the gateway

    def to_dict(self) -> dict[str, Any]:
        out = Record.to_dict(self)
        out.pop("key_hash")
        out.pop("signing_key")
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
    """One control-plane change: who made it, on what, through which request, and the object before and after.

    Entries written before schema version 6 have only id, ts, actor, action, target and detail.
    """

    id: int
    ts: datetime
    actor: str  # "user:alice", "service_account:ci", "bootstrap", "gateway" (the data plane itself)
    action: str  # "key.create", "registry.update", ...
    target: str  # the changed object's id (or name)
    detail: dict[str, Any] = field(default_factory=dict)  # the fields the change set (old rows: free-form)
    actor_type: str | None = None  # bootstrap | user | service_account | api_key | gateway
    actor_id: str | None = None
    org_id: str | None = None  # the org the target belongs to (None: a fleet-wide object)
    request_id: str | None = None
    source_ip: str | None = None
    source: str | None = None  # X-Fleetgate-Change-Source, e.g. "git:https://host/repo#main@<sha>"
    before: dict[str, Any] | None = None  # None: the change created the object
    after: dict[str, Any] | None = None  # None: the change removed it


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which audit entries a list or an export returns; None matches anything."""

    actor: str | None = None
    action: str | None = None  # exact, or a prefix ending in "*" ("key.*")
    target: str | None = None
    org_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None  # exclusive


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


# identity (issue 12): users, service accounts, personal admin tokens, OAuth2 signing keys
PRINCIPAL_STATUSES = ("active", "disabled")


@dataclass(frozen=True, slots=True)
class User(Record):
    """A person with a role; `org_id` None makes the user global (acts on every org)."""

    id: str
    name: str
    email: str | None
    org_id: str | None
    role: str  # one of gateway.auth.principal.ROLES
    status: str  # one of PRINCIPAL_STATUSES
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ServiceAccount(Record):
    """An OAuth2 client (client-credentials grant) for CI and automation; only the secret's SHA-256 is stored.

    Access tokens issued before `secret_rotated_at` are refused: rotating the secret ends them too.
    """

    id: str
    name: str
    org_id: str | None
    role: str
    status: str
    client_id: str
    secret_hash: str
    secret_rotated_at: datetime
    created_at: datetime
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        out = Record.to_dict(self)
        out.pop("secret_hash")
        return out


@dataclass(frozen=True, slots=True)
class AdminToken(Record):
    """A user's personal admin token; only its SHA-256 is stored. Revoked tokens stay listed for audit."""

    id: str
    user_id: str
    name: str
    prefix: str  # first characters of the secret, for display ("fgp_3f9a…")
    token_hash: str
    expires_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    created_at: datetime

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if now >= self.expires_at else "active"

    def to_dict(self) -> dict[str, Any]:
        out = Record.to_dict(self)
        out.pop("token_hash")
        return out


@dataclass(frozen=True, slots=True)
class SigningKey(Record):
    """A key that signs OAuth2 access tokens; the newest unretired one signs, retired ones still verify
    the tokens they signed until those have expired."""

    kid: str
    algorithm: str
    private_pem: str
    public_jwk: dict[str, Any]
    created_at: datetime
    retired_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        out = Record.to_dict(self)
        out.pop("private_pem")
        return out


# declarative configuration (issue 12): which applied config owns which object
CONFIG_KINDS = ("org", "user", "service_account", "api_key", "budget", "model", "endpoint")


@dataclass(frozen=True, slots=True)
class OwnedObject(Record):
    """An object an applied config owns, by id: `opsctl apply --prune` may remove it, and nothing else."""

    kind: str  # one of CONFIG_KINDS
    object_id: str
    name: str  # how the config names it ("acme/web" for a key), for plans and messages
    owner: str  # the config's ownership label
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class OwnershipChange:
    """What replacing an owner's set did: the set afterwards, and how it differs from before."""

    objects: tuple[OwnedObject, ...]
    added: tuple[OwnedObject, ...]  # newly owned, adopted ones included
    renamed: tuple[OwnedObject, ...]  # still owned, under a new name
    removed: tuple[OwnedObject, ...]  # no longer owned (the objects themselves are untouched)
    adopted: tuple[OwnedObject, ...]  # taken over, as their previous owners held them

    @property
    def changed(self) -> bool:
        return bool(self.added or self.renamed or self.removed)
