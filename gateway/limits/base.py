"""The limits seam: what the gateway passes in, what it gets back, and the `Limiter` Protocol.

Two implementations keep one contract: `RedisLimiter` (global, across replicas) and
`LocalLimiter` (one process; also the outage fallback).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

from gateway.errors import InvalidRequest

if TYPE_CHECKING:
    from gateway.limits.restore import Restored
    from gateway.store.models import Budget

BUDGET_SCOPES = ("org", "key")
PERIODS = ("daily", "monthly", "total")
OUTAGE_POLICIES = ("local", "fail-open", "fail-closed")
# Characters that would break the `fg:{org_id}:…` hash tag or the key layout.
_BAD_ID_CHARS = frozenset("{}: \n\r\t")


def check_id(name: str, value: str) -> None:
    """Raise InvalidRequest unless `value` is a usable id inside a Redis key name."""
    if not value or not isinstance(value, str) or _BAD_ID_CHARS.intersection(value):
        raise InvalidRequest(f"{name}={value!r} is invalid: expected a non-empty id without braces, colons or spaces")


def _check_limit(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise InvalidRequest(f"{name}={value!r} is invalid: expected a positive integer or None")


@dataclass(frozen=True, slots=True)
class BudgetRule:
    """A spend limit in micro-USD for an org, or for one key of it, per UTC calendar period.

    `org_id` is the org the budget belongs to (all of an org's Redis keys share its hash tag);
    it defaults to `scope_id` for org budgets and is required for key budgets.
    `soft_limit_pct` (0 disables) flags reservations that take spend to that share of the limit.
    """

    scope: str
    scope_id: str
    limit_micros: int
    period: str
    soft_limit_pct: int = 80
    org_id: str = ""

    def __post_init__(self) -> None:
        if self.scope not in BUDGET_SCOPES:
            raise InvalidRequest(f"budget scope={self.scope!r} is invalid: expected one of {', '.join(BUDGET_SCOPES)}")
        if self.period not in PERIODS:
            raise InvalidRequest(f"budget period={self.period!r} is invalid: expected one of {', '.join(PERIODS)}")
        check_id("budget scope_id", self.scope_id)
        if not isinstance(self.limit_micros, int) or isinstance(self.limit_micros, bool) or self.limit_micros < 0:
            raise InvalidRequest(f"budget limit_micros={self.limit_micros!r} is invalid: expected an integer >= 0")
        if not isinstance(self.soft_limit_pct, int) or not 0 <= self.soft_limit_pct <= 100:
            raise InvalidRequest(f"budget soft_limit_pct={self.soft_limit_pct!r} is invalid: expected 0-100")
        if not self.org_id:
            if self.scope == "key":
                raise InvalidRequest("a key budget needs org_id (the org that owns the key)")
            object.__setattr__(self, "org_id", self.scope_id)
        check_id("budget org_id", self.org_id)

    @classmethod
    def from_budget(cls, budget: Budget) -> BudgetRule:
        """The rule for a stored `Budget` record."""
        if budget.key_id:
            return cls("key", budget.key_id, budget.limit_micros, budget.period, budget.soft_limit_pct, budget.org_id)
        return cls("org", budget.org_id, budget.limit_micros, budget.period, budget.soft_limit_pct, budget.org_id)


@dataclass(frozen=True, slots=True)
class LimitPolicy:
    """Everything that limits one API key's requests; build it once per key and reuse it."""

    org_id: str
    key_id: str
    key_rpm: int | None = None
    key_tpm: int | None = None
    org_rpm: int | None = None
    org_tpm: int | None = None
    budgets: tuple[BudgetRule, ...] = ()
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        check_id("org_id", self.org_id)
        check_id("key_id", self.key_id)
        for name in ("key_rpm", "key_tpm", "org_rpm", "org_tpm"):
            _check_limit(name, getattr(self, name))
        object.__setattr__(self, "budgets", tuple(self.budgets))
        for rule in self.budgets:
            if rule.org_id != self.org_id or (rule.scope == "key" and rule.scope_id != self.key_id):
                raise InvalidRequest(
                    f"budget {rule.scope}:{rule.scope_id} does not apply to key {self.key_id} of org {self.org_id}"
                )
        fields = (self.org_id, self.key_id, self.key_rpm, self.key_tpm, self.org_rpm, self.org_tpm, self.budgets)
        object.__setattr__(self, "_hash", hash(fields))

    def __hash__(self) -> int:
        # Computed once: limiters look policies up on every request.
        return self._hash


class BudgetSlot(NamedTuple):
    """Where one budget's current period lives (key names double as LocalLimiter dict keys)."""

    rule: BudgetRule
    hash_key: str
    lease_key: str
    expire_at_ms: int  # 0 = never ("total" budgets)


class TokenSlot(NamedTuple):
    """A tokens-per-minute limit whose debit settle corrects to the actual token count."""

    key: str
    limit: int


class Reservation:
    """What `reserve` returns. The gateway reads `headers`, `soft_limit_hit` and the amounts;
    `marker_key` and `template` are for `settle` (opaque). Treat as read-only.

    A plain slots class, not a dataclass: one is built per request, and positional
    construction is the cheapest.
    """

    __slots__ = ("id", "org_id", "origin", "reserved_micros", "reserved_tokens", "headers", "soft_limit_rules",
                 "marker_key", "template")

    def __init__(self, id: str, org_id: str, origin: str, reserved_micros: int, reserved_tokens: int,  # noqa: A002
                 headers: dict[str, str] | None = None, soft_limit_rules: tuple[BudgetRule, ...] = (),
                 marker_key: str = "", template: ReservationTemplate | None = None) -> None:
        self.id = id
        self.org_id = org_id
        self.origin = origin  # "redis", "local" (made by the in-process limiter) or "none" (nothing to limit)
        self.reserved_micros = reserved_micros
        self.reserved_tokens = reserved_tokens
        self.headers: dict[str, str] = {} if headers is None else headers
        self.soft_limit_rules = soft_limit_rules
        self.marker_key = marker_key
        self.template = template  # the limits and key names it was made with (None: nothing to settle)

    @property
    def soft_limit_hit(self) -> bool:
        return bool(self.soft_limit_rules)

    @property
    def needs_settle(self) -> bool:
        return self.template is not None and self.template.needs_settle

    @property
    def budgets(self) -> tuple[BudgetSlot, ...]:
        return () if self.template is None else self.template.budgets

    @property
    def token_limits(self) -> tuple[TokenSlot, ...]:
        return () if self.template is None else self.template.token_slots

    def __repr__(self) -> str:
        return (f"Reservation(id={self.id!r}, org_id={self.org_id!r}, origin={self.origin!r}, "
                f"reserved_micros={self.reserved_micros}, reserved_tokens={self.reserved_tokens})")


class ReservationTemplate(Protocol):
    """What a Reservation keeps of the plan it was made with (plan.Template)."""

    @property
    def needs_settle(self) -> bool: ...

    @property
    def budgets(self) -> tuple[BudgetSlot, ...]: ...

    @property
    def token_slots(self) -> tuple[TokenSlot, ...]: ...


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """One budget's current period. `remaining_micros` = limit - spent - reserved, never below 0."""

    limit_micros: int
    spent_micros: int
    reserved_micros: int
    remaining_micros: int
    period_start: datetime | None  # None for "total"
    resets_at: datetime | None  # None for "total"
    soft_limit_hit: bool

    def to_dict(self) -> dict[str, object]:
        return {
            "limit_micros": self.limit_micros,
            "spent_micros": self.spent_micros,
            "reserved_micros": self.reserved_micros,
            "remaining_micros": self.remaining_micros,
            "period_start": self.period_start.isoformat() if self.period_start else None,
            "resets_at": self.resets_at.isoformat() if self.resets_at else None,
            "soft_limit_hit": self.soft_limit_hit,
        }


class LimiterHooks:
    """Observation points for metrics and alerts; subclass and override (every default is a no-op).

    Called synchronously on the request path: keep overrides cheap (a counter increment).
    """

    def soft_limit_hit(self, rule: BudgetRule) -> None:
        """A reservation took `rule`'s period to its soft-limit threshold or beyond."""

    def rejected(self, reason: str, scope: str) -> None:
        """A reserve was refused; reason is "rpm", "tpm" or "budget", scope "key" or "org"."""

    def degraded_changed(self, degraded: bool) -> None:
        """Redis became unreachable (True) or reachable again (False)."""


@runtime_checkable
class Limiter(Protocol):
    """Rate limits and budgets, checked and counted atomically per request."""

    @property
    def degraded(self) -> bool:
        """True while the shared store is unreachable and requests are handled per the outage policy."""
        ...

    async def reserve(self, policy: LimitPolicy, *, cost_micros: int, tokens: int) -> Reservation:
        """Count one request and `tokens` against every RPM/TPM limit and reserve `cost_micros` in
        every budget of `policy`, all or nothing.

        Args:
            cost_micros: the request's maximum possible cost (prompt estimate + max_tokens output).
            tokens: prompt estimate + max_tokens.

        Raises:
            InsufficientQuota: a budget cannot cover `cost_micros` (checked before rate limits).
            RateLimited: a rate limit is exhausted; headers carry Retry-After (whole seconds, >= 1),
                retry-after-ms and x-ratelimit-*.
            ServiceUnavailable: only with outage policy "fail-closed" while the store is down.
            InvalidRequest: negative amounts.
        """
        ...

    async def settle(self, reservation: Reservation, *, cost_micros: int, tokens: int) -> None:
        """Replace the reservation by the actual spend and correct the TPM debit to `tokens`.

        Records the actual spend even when it exceeds the reservation. Idempotent: a second
        settle of the same reservation does nothing. Never raises store errors.
        """
        ...

    async def release(self, reservation: Reservation) -> None:
        """Free a reservation whose request never reached upstream: settle with 0 cost and 0
        tokens (the request itself stays counted against RPM)."""
        ...

    async def budget_status(self, rule: BudgetRule) -> BudgetStatus:
        """The current period of `rule`."""
        ...

    async def rebuild(self, rule: BudgetRule, spent_micros: int) -> None:
        """Set the current period's spend of `rule` outright (counted as restored from the lake)."""
        ...

    async def restore_budgets(self, rules: Sequence[BudgetRule], *, reset: bool = False) -> list[Restored]:
        """Give the current periods of `rules` their spend from the usage lake, where they lack it
        (a no-op returning [] for a limiter built without a restorer). Limiters also do this on
        their own for periods they meet without it; the gateway calls it at start-up for all budgets.

        Args:
            reset: first forget what was counted before now, and take it from the lake instead
                (`opsctl budget rebuild`).

        Raises:
            ServiceUnavailable: the lake (RestoreFailed) or Redis is unreachable; a retry is scheduled.
        """
        ...

    async def close(self) -> None:
        """Stop background work; does not close a Redis client it was given."""
        ...
