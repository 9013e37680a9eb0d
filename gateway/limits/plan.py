"""What one reserve must check (the plan) and how its outcome becomes a Reservation or an error.

Shared by both limiters, so key names, headers, soft-limit flags and error messages are
identical whichever implementation (or the outage fallback) handled the request.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

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
TEMPLATE_CACHE_SIZE = 10_000


class RateSlot(NamedTuple):
    key: str
    kind: str  # "rpm" | "tpm"
    scope: str  # "key" | "org"
    limit: int


class Plan:
    """Everything one reserve touches; `now_ms` is on the gcra time scale. (Plain slots class:
    it is built on every request.)"""

    __slots__ = ("reservation_id", "org_id", "now_s", "now_ms", "cost", "tokens", "marker_key", "rates",
                 "budgets", "token_slots", "needs_marker")

    def __init__(self, reservation_id: str, org_id: str, now_s: float, cost: int, tokens: int, marker_key: str,
                 template: _Template) -> None:
        self.reservation_id = reservation_id
        self.org_id = org_id
        self.now_s = now_s
        self.now_ms = to_ms(now_s)
        self.cost = cost
        self.tokens = tokens
        self.marker_key = marker_key
        self.rates: tuple[RateSlot, ...] = template.rates
        self.budgets: tuple[BudgetSlot, ...] = template.budgets
        self.token_slots: tuple[TokenSlot, ...] = template.token_slots
        self.needs_marker: bool = template.needs_marker

    @property
    def empty(self) -> bool:
        return not self.rates and not self.budgets

    def amount(self, rate: RateSlot) -> int:
        """What `rate` is charged: one request, or the request's tokens."""
        return 1 if rate.kind == "rpm" else self.tokens

    @property
    def lease_member(self) -> str:
        return f"{self.reservation_id}:{self.cost}"


class Outcome:
    """A limiter's verdict on a plan, in the form both implementations produce."""

    __slots__ = ("status", "readings", "wait_ms", "failed", "budgets")

    def __init__(self, status: int, readings: list[Reading], *, wait_ms: float = 0.0, failed: int = -1,
                 budgets: list[tuple[int, int]] | None = None) -> None:
        self.status = status
        self.readings = readings
        self.wait_ms = wait_ms  # RATE_LIMITED: time until the request fits (inf: never)
        self.failed = failed  # index of the refusing rate slot or budget
        self.budgets = budgets or []  # (spent, reserved) per budget


class _Template:
    """The key names of one policy, computed once; budget slots are valid for [valid_from, valid_until)."""

    __slots__ = ("rates", "token_slots", "needs_marker", "budgets", "valid_from", "valid_until")

    def __init__(self, rates: tuple[RateSlot, ...]) -> None:
        self.rates = rates
        self.token_slots = tuple(TokenSlot(r.key, r.limit) for r in rates if r.kind == "tpm")
        self.budgets: tuple[BudgetSlot, ...] = ()
        self.valid_from = math.inf
        self.valid_until = -math.inf
        self.needs_marker = bool(self.token_slots)


def check_amounts(cost_micros: int, tokens: int) -> None:
    if type(cost_micros) is int and type(tokens) is int and cost_micros >= 0 and tokens >= 0:
        return
    for name, value in (("cost_micros", cost_micros), ("tokens", tokens)):
        if type(value) is not int or value < 0:
            raise InvalidRequest(f"{name}={value!r} is invalid: expected an integer >= 0")


def usd(micros: int) -> str:
    return f"${micros / 1_000_000:.6f}".rstrip("0").rstrip(".") if micros % 10_000 else f"${micros / 1_000_000:.2f}"


class Planner:
    """Turns a policy and a request's amounts into a Plan; owns the key space and the calendar.

    Key names are computed once per policy (policies are hashed once, see LimitPolicy) and kept
    in a bounded cache, so a reserve builds almost nothing.
    """

    __slots__ = ("keys", "lease_s", "_calendar", "_templates")

    def __init__(self, keys: KeySpace, lease_s: float) -> None:
        self.keys = keys
        self.lease_s = lease_s
        self._calendar = PeriodCalendar()
        self._templates: dict[LimitPolicy, _Template] = {}

    def budget_slot(self, rule: BudgetRule, now_s: float) -> BudgetSlot:
        window = self._calendar.window(rule.period, now_s)
        hash_key, lease_key = self.keys.budget(rule.org_id, rule.scope, rule.scope_id, rule.period, window.suffix)
        expire_at = 0
        if window.end is not None:
            expire_at = int((window.end + max(PERIOD_MARGIN_S, 2 * self.lease_s)) * 1000)
        return BudgetSlot(rule, hash_key, lease_key, expire_at)

    def window(self, rule: BudgetRule, now_s: float) -> PeriodWindow:
        return self._calendar.window(rule.period, now_s)

    def _template(self, policy: LimitPolicy) -> _Template:
        org, key = policy.org_id, policy.key_id
        rates = tuple(
            RateSlot(self.keys.rate(org, scope, scope_id, kind), kind, scope, limit)
            for scope, scope_id, kind, limit in (
                ("key", key, "rpm", policy.key_rpm),
                ("org", org, "rpm", policy.org_rpm),
                ("key", key, "tpm", policy.key_tpm),
                ("org", org, "tpm", policy.org_tpm),
            )
            if limit is not None
        )
        if len(self._templates) >= TEMPLATE_CACHE_SIZE:
            self._templates.clear()
        template = self._templates[policy] = _Template(rates)
        return template

    def plan(self, policy: LimitPolicy, now_s: float, cost: int, tokens: int) -> Plan:
        template = self._templates.get(policy) or self._template(policy)
        if policy.budgets and not template.valid_from <= now_s < template.valid_until:
            template.budgets = tuple(self.budget_slot(rule, now_s) for rule in policy.budgets)
            windows = [self._calendar.window(rule.period, now_s) for rule in policy.budgets]
            template.valid_from = max((w.start for w in windows if w.start is not None), default=-math.inf)
            template.valid_until = min((w.end for w in windows if w.end is not None), default=math.inf)
            template.needs_marker = True
        rid = os.urandom(9).hex()
        return Plan(rid, policy.org_id, now_s, cost, tokens, self.keys.marker(policy.org_id, rid), template)


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
                f"requested {plan.tokens}. Reduce the prompt or max_tokens.",
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
