"""What one reserve must check (the plan) and how its outcome becomes a Reservation or an error.

Shared by both limiters, so key names, headers, soft-limit flags and error messages are
identical whichever implementation (or the outage fallback) handled the request.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from gateway.errors import InsufficientQuota, InvalidRequest, RateLimited
from gateway.limits.base import BudgetRule, BudgetSlot, BudgetStatus, LimiterHooks, LimitPolicy, Reservation, TokenSlot
from gateway.limits.gcra import to_ms
from gateway.limits.headers import Reading, ratelimit_headers, retry_headers
from gateway.limits.keys import KeySpace
from gateway.limits.periods import PeriodCalendar, PeriodWindow

OK, RATE_LIMITED, OVER_BUDGET = 0, 1, 2
# Budget counters of a period outlive its end by this much (and by twice the lease), so late
# settles still land and `budget_status` can be asked about the period that just ended.
PERIOD_MARGIN_S = 2 * 86_400


@dataclass(frozen=True, slots=True)
class RateSlot:
    key: str
    kind: str  # "rpm" | "tpm"
    scope: str  # "key" | "org"
    limit: int
    amount: int


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything one reserve touches; `now_ms` is on the gcra time scale."""

    reservation_id: str
    org_id: str
    now_s: float
    now_ms: float
    cost: int
    tokens: int
    marker_key: str
    rates: tuple[RateSlot, ...]
    budgets: tuple[BudgetSlot, ...]

    @property
    def empty(self) -> bool:
        return not self.rates and not self.budgets

    @property
    def token_slots(self) -> tuple[TokenSlot, ...]:
        return tuple(TokenSlot(r.key, r.limit) for r in self.rates if r.kind == "tpm")

    @property
    def lease_member(self) -> str:
        return f"{self.reservation_id}:{self.cost}"


@dataclass(slots=True)
class Outcome:
    """A limiter's verdict on a plan, in the form both implementations produce."""

    status: int
    readings: list[Reading]
    wait_ms: float = 0.0  # RATE_LIMITED: time until the request fits (inf: never)
    failed: int = -1  # index of the refusing rate slot or budget
    budgets: list[tuple[int, int]] = field(default_factory=list)  # (spent, reserved) per budget


def check_amounts(cost_micros: int, tokens: int) -> None:
    for name, value in (("cost_micros", cost_micros), ("tokens", tokens)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidRequest(f"{name}={value!r} is invalid: expected an integer >= 0")


def usd(micros: int) -> str:
    return f"${micros / 1_000_000:.6f}".rstrip("0").rstrip(".") if micros % 10_000 else f"${micros / 1_000_000:.2f}"


class Planner:
    """Turns a policy and a request's amounts into a Plan; owns the key space and the calendar."""

    __slots__ = ("keys", "lease_s", "_calendar")

    def __init__(self, keys: KeySpace, lease_s: float) -> None:
        self.keys = keys
        self.lease_s = lease_s
        self._calendar = PeriodCalendar()

    def budget_slot(self, rule: BudgetRule, now_s: float) -> BudgetSlot:
        window = self._calendar.window(rule.period, now_s)
        hash_key, lease_key = self.keys.budget(rule.org_id, rule.scope, rule.scope_id, rule.period, window.suffix)
        expire_at = 0
        if window.end is not None:
            expire_at = int((window.end + max(PERIOD_MARGIN_S, 2 * self.lease_s)) * 1000)
        return BudgetSlot(rule, hash_key, lease_key, expire_at)

    def window(self, rule: BudgetRule, now_s: float) -> PeriodWindow:
        return self._calendar.window(rule.period, now_s)

    def plan(self, policy: LimitPolicy, now_s: float, cost: int, tokens: int) -> Plan:
        org, key = policy.org_id, policy.key_id
        rates: list[RateSlot] = []
        for scope, scope_id, kind, limit, amount in (
            ("key", key, "rpm", policy.key_rpm, 1),
            ("org", org, "rpm", policy.org_rpm, 1),
            ("key", key, "tpm", policy.key_tpm, tokens),
            ("org", org, "tpm", policy.org_tpm, tokens),
        ):
            if limit is not None:
                rates.append(RateSlot(self.keys.rate(org, scope, scope_id, kind), kind, scope, limit, amount))
        budgets = tuple(self.budget_slot(rule, now_s) for rule in policy.budgets)
        rid = os.urandom(9).hex()
        return Plan(rid, org, now_s, to_ms(now_s), cost, tokens, self.keys.marker(org, rid), tuple(rates), budgets)


def soft_limit_reached(rule: BudgetRule, spent: int, reserved: int) -> bool:
    return rule.soft_limit_pct > 0 and (spent + reserved) * 100 >= rule.limit_micros * rule.soft_limit_pct


def finish(plan: Plan, outcome: Outcome, origin: str, hooks: LimiterHooks) -> Reservation:
    """The Reservation for an accepted plan; raises the OpenAI-shaped error for a refused one."""
    if outcome.status == OVER_BUDGET:
        slot = plan.budgets[outcome.failed]
        spent, reserved = outcome.budgets[outcome.failed]
        rule = slot.rule
        hooks.rejected("budget", rule.scope)
        left = max(0, rule.limit_micros - spent - reserved)
        raise InsufficientQuota(
            f"The {rule.period} budget of {rule.scope} {rule.scope_id} is exhausted: {usd(left)} of "
            f"{usd(rule.limit_micros)} left, and this request may cost up to {usd(plan.cost)}."
        )
    if outcome.status == RATE_LIMITED:
        slot_r = plan.rates[outcome.failed]
        hooks.rejected(slot_r.kind, slot_r.scope)
        noun = "requests" if slot_r.kind == "rpm" else "tokens"
        if math.isinf(outcome.wait_ms):
            raise RateLimited(
                f"Request too large for the {slot_r.scope}'s tokens per minute limit: limit {slot_r.limit}, "
                f"requested {slot_r.amount}. Reduce the prompt or max_tokens.",
                headers=retry_headers(60_000.0, outcome.readings),
            )
        headers = retry_headers(outcome.wait_ms, outcome.readings)
        raise RateLimited(
            f"Rate limit reached for {noun} per minute ({slot_r.scope}): limit {slot_r.limit}. "
            f"Please try again in {headers['Retry-After']}s.",
            headers=headers,
        )
    soft: list[BudgetRule] = []
    for slot, (spent, reserved) in zip(plan.budgets, outcome.budgets, strict=True):
        if soft_limit_reached(slot.rule, spent, reserved):
            soft.append(slot.rule)
            hooks.soft_limit_hit(slot.rule)
    return Reservation(
        id=plan.reservation_id,
        org_id=plan.org_id,
        origin=origin,
        reserved_micros=plan.cost,
        reserved_tokens=plan.tokens,
        headers=ratelimit_headers(outcome.readings),
        soft_limit_hit=bool(soft),
        soft_limit_rules=tuple(soft),
        marker_key=plan.marker_key,
        budgets=plan.budgets,
        token_limits=plan.token_slots,
    )


def budget_status(rule: BudgetRule, window: PeriodWindow, spent: int, reserved: int) -> BudgetStatus:
    """The BudgetStatus of `rule` for its period `window` with these counters."""
    return BudgetStatus(
        limit_micros=rule.limit_micros,
        spent_micros=spent,
        reserved_micros=reserved,
        remaining_micros=max(0, rule.limit_micros - spent - reserved),
        period_start=window.start_dt,
        resets_at=window.end_dt,
        soft_limit_hit=soft_limit_reached(rule, spent, reserved),
    )


def unlimited(plan: Plan, origin: str = "none") -> Reservation:
    """A reservation that limits nothing and needs no settle (no limits, or fail-open)."""
    return Reservation(plan.reservation_id, plan.org_id, origin, plan.cost, plan.tokens)
