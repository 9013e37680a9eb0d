"""What one reserve must check (a policy's Template) and how its outcome becomes a Reservation or an error.

Shared by both limiters, so key names, headers, soft-limit flags and error messages are
identical whichever implementation (or the outage fallback) handled the request.
"""

from __future__ import annotations

import itertools
import math
import os
from typing import Any, NamedTuple, NoReturn

from gateway.errors import InsufficientQuota, InvalidRequest, RateLimited
from gateway.limits.base import (
    BudgetRule,
    BudgetSlot,
    BudgetStatus,
    LimiterHooks,
    LimitPolicy,
    Reservation,
    TokenSlot,
)
from gateway.limits.headers import (
    Reading,
    header_groups,
    retry_headers,
    tightest_headers,
)
from gateway.limits.keyspace import KeySpace
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


class Outcome:
    """A refused reserve, in the form both implementations produce (the accepted path needs none)."""

    __slots__ = ("status", "readings", "wait_ms", "failed", "budgets")

    def __init__(self, status: int, readings: list[Reading], *, wait_ms: float = 0.0, failed: int = -1,
                 budgets: list[tuple[int, int]] | None = None) -> None:
        self.status = status
        self.readings = readings
        self.wait_ms = wait_ms  # RATE_LIMITED: time until the request fits (inf: never)
        self.failed = failed  # index of the refusing rate slot or budget
        self.budgets = budgets or []  # (spent, reserved) per budget


class Template:
    """One policy's limits for its current budget periods, computed once: key names, header names
    per kind, soft-limit thresholds. Valid for now in [valid_from, valid_until); a new period gets
    a new Template, so reservations can keep a reference for settle (nothing in it changes but the
    cache key `policy` and the once-set `script_args`)."""

    __slots__ = ("policy", "org_id", "marker_prefix", "rates", "n_rpm", "budgets", "token_slots", "needs_settle",
                 "empty", "header_groups", "soft", "valid_from", "valid_until", "script_args")

    def __init__(self, policy: LimitPolicy, keys: KeySpace, budgets: tuple[BudgetSlot, ...],
                 valid_from: float, valid_until: float) -> None:
        self.policy = policy  # the object it is cached under (see Planner.template)
        org, key = policy.org_id, policy.key_id
        # Order matters: RPM limits first (they take 1), then TPM (they take the tokens).
        self.rates = tuple(
            RateSlot(keys.rate(org, scope, scope_id, kind), kind, scope, limit)
            for scope, scope_id, kind, limit in (
                ("key", key, "rpm", policy.key_rpm),
                ("org", org, "rpm", policy.org_rpm),
                ("key", key, "tpm", policy.key_tpm),
                ("org", org, "tpm", policy.org_tpm),
            )
            if limit is not None
        )
        self.org_id = org
        self.marker_prefix = keys.marker(org, "")
        self.n_rpm = sum(1 for rate in self.rates if rate.kind == "rpm")
        self.budgets = budgets
        self.token_slots = tuple(TokenSlot(r.key, r.limit) for r in self.rates if r.kind == "tpm")
        self.needs_settle = bool(self.token_slots or budgets)
        self.empty = not self.rates and not budgets
        self.header_groups = header_groups([(rate.kind, rate.limit) for rate in self.rates])
        # (budget index, rule, limit * pct): the soft limit is hit when (spent + reserved) * 100 >= that.
        self.soft = tuple((i, slot.rule, slot.rule.limit_micros * slot.rule.soft_limit_pct)
                          for i, slot in enumerate(budgets) if slot.rule.soft_limit_pct > 0)
        self.valid_from = valid_from
        self.valid_until = valid_until
        self.script_args: Any = None  # RedisLimiter's precomputed script arguments for this template


def check_amounts(cost_micros: int, tokens: int) -> None:
    if type(cost_micros) is int and type(tokens) is int and cost_micros >= 0 and tokens >= 0:
        return
    for name, value in (("cost_micros", cost_micros), ("tokens", tokens)):
        if type(value) is not int or value < 0:
            raise InvalidRequest(f"{name}={value!r} is invalid: expected an integer >= 0")


def usd(micros: int) -> str:
    return f"${micros / 1_000_000:.6f}".rstrip("0").rstrip(".") if micros % 10_000 else f"${micros / 1_000_000:.2f}"


class Planner:
    """Turns a policy into its Template; owns the key space and the calendar.

    Templates are cached per policy (policies are hashed once, see LimitPolicy) in a bounded
    cache and rebuilt when a budget period ends, so a reserve builds almost nothing.
    """

    __slots__ = ("keys", "lease_s", "_calendar", "_templates", "_id_prefix", "_ids")

    def __init__(self, keys: KeySpace, lease_s: float) -> None:
        self.keys = keys
        self.lease_s = lease_s
        self._calendar = PeriodCalendar()
        self._templates: dict[LimitPolicy, Template] = {}
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count()

    def new_id(self) -> str:
        """A reservation id, unique across replicas without coordination: 64 random bits per
        limiter, then a counter (cheaper than random bits per id)."""
        return f"{self._id_prefix}{next(self._ids):x}"

    def budget_slot(self, rule: BudgetRule, now_s: float) -> BudgetSlot:
        window = self._calendar.window(rule.period, now_s)
        hash_key, lease_key = self.keys.budget(rule.org_id, rule.scope, rule.scope_id, rule.period, window.suffix)
        expire_at = 0
        if window.end is not None:
            expire_at = int((window.end + max(PERIOD_MARGIN_S, 2 * self.lease_s)) * 1000)
        return BudgetSlot(rule, hash_key, lease_key, expire_at)

    def window(self, rule: BudgetRule, now_s: float) -> PeriodWindow:
        return self._calendar.window(rule.period, now_s)

    def template(self, policy: LimitPolicy, now_s: float) -> Template:
        """The template of `policy` for the budget periods containing `now_s`."""
        template = self._templates.get(policy)
        if template is not None and template.valid_from <= now_s < template.valid_until:
            if template.policy is not policy:
                # An equal policy object (e.g. rebuilt after a key refresh): cache under this one, so
                # later lookups match by identity instead of comparing every field.
                del self._templates[policy]
                self._templates[policy] = template
                template.policy = policy
            return template
        return self._build(policy, now_s)

    def _build(self, policy: LimitPolicy, now_s: float) -> Template:
        windows = [self._calendar.window(rule.period, now_s) for rule in policy.budgets]
        template = Template(
            policy, self.keys, tuple(self.budget_slot(rule, now_s) for rule in policy.budgets),
            max((w.start for w in windows if w.start is not None), default=-math.inf),
            min((w.end for w in windows if w.end is not None), default=math.inf),
        )
        if len(self._templates) >= TEMPLATE_CACHE_SIZE:
            self._templates.clear()
        self._templates[policy] = template
        return template


def soft_limit_reached(rule: BudgetRule, spent: int, reserved: int) -> bool:
    return rule.soft_limit_pct > 0 and (spent + reserved) * 100 >= rule.limit_micros * rule.soft_limit_pct


def accept(template: Template, rid: str, origin: str, cost: int, tokens: int, readings: list[Any],
           counters: list[Any], hooks: LimiterHooks) -> Reservation:
    """The Reservation for an accepted reserve.

    Args:
        readings: flat (remaining, reset_ms) per rate slot.
        counters: flat (spent, reserved) per budget, after the reservation (ints).
    """
    soft: tuple[BudgetRule, ...] = ()
    if template.soft:
        hit = []
        for index, rule, threshold in template.soft:
            if (counters[2 * index] + counters[2 * index + 1]) * 100 >= threshold:
                hit.append(rule)
                hooks.soft_limit_hit(rule)
        soft = tuple(hit)
    headers = tightest_headers(template.header_groups, readings) if template.header_groups else {}
    return Reservation(rid, template.org_id, origin, cost, tokens, headers, soft, template.marker_prefix + rid,
                       template)


def refuse(template: Template, cost: int, tokens: int, outcome: Outcome, hooks: LimiterHooks) -> NoReturn:
    """Raise the OpenAI-shaped error for a refused reserve."""
    if outcome.status == OVER_BUDGET:
        slot = template.budgets[outcome.failed]
        spent, reserved = outcome.budgets[outcome.failed]
        rule = slot.rule
        hooks.rejected("budget", rule.scope)
        left = max(0, rule.limit_micros - spent - reserved)
        raise InsufficientQuota(
            f"The {rule.period} budget of {rule.scope} {rule.scope_id} is exhausted: {usd(left)} of "
            f"{usd(rule.limit_micros)} left, and this request may cost up to {usd(cost)}."
        )
    slot_r = template.rates[outcome.failed]
    hooks.rejected(slot_r.kind, slot_r.scope)
    noun = "requests" if slot_r.kind == "rpm" else "tokens"
    if math.isinf(outcome.wait_ms):
        raise RateLimited(
            f"Request too large for the {slot_r.scope}'s tokens per minute limit: limit {slot_r.limit}, "
            f"requested {tokens}. Reduce the prompt or max_tokens.",
            headers=retry_headers(60_000.0, outcome.readings),
        )
    headers = retry_headers(outcome.wait_ms, outcome.readings)
    raise RateLimited(
        f"Rate limit reached for {noun} per minute ({slot_r.scope}): limit {slot_r.limit}. "
        f"Please try again in {headers['Retry-After']}s.",
        headers=headers,
    )


def readings_of(template: Template, flat: list[Any]) -> list[Reading]:
    """Reading objects from flat (remaining, reset_ms) per rate slot (refusals only)."""
    return [Reading(rate.kind, rate.scope, rate.limit, int(flat[2 * i]), float(flat[2 * i + 1]))
            for i, rate in enumerate(template.rates)]


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


def unlimited(rid: str, org_id: str, cost: int, tokens: int, origin: str = "none") -> Reservation:
    """A reservation that limits nothing and needs no settle (no limits, or fail-open)."""
    return Reservation(rid, org_id, origin, cost, tokens)
