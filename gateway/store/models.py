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


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple):
        return list(value)
    return value


_TUPLE_FIELDS = frozenset({"allowed_models", "fallbacks"})


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
class RegistryEntry:
    """A model with its endpoints, as the data plane sees it."""

    model: Model
    endpoints: tuple[Endpoint, ...]
