"""In-process rate limits and budgets with the same semantics as the Redis scripts.

Serves a single gateway process when no Redis is configured, and every replica on its own
while Redis is unreachable (outage policy "local"). Atomic because it never awaits inside.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from gateway.errors import InvalidRequest
from gateway.limits.base import BudgetRule, BudgetSlot, BudgetStatus, LimiterHooks, LimitPolicy, Reservation
from gateway.limits.gcra import admit, backlog, correct, remaining, to_ms
from gateway.limits.headers import Reading
from gateway.limits.keys import KeySpace
from gateway.limits.plan import (
    OK,
    OVER_BUDGET,
    RATE_LIMITED,
    Outcome,
    Plan,
    Planner,
    RateSlot,
    budget_status,
    check_amounts,
    finish,
    unlimited,
)

SWEEP_INTERVAL_S = 60.0


class _Budget:
    """One budget period: counters plus open leases in expiry order (member -> (expiry_s, micros))."""

    __slots__ = ("spent", "reserved", "leases", "expire_at_s")

    def __init__(self, expire_at_ms: int) -> None:
        self.spent = 0
        self.reserved = 0
        self.leases: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self.expire_at_s = expire_at_ms / 1000.0 if expire_at_ms else 0.0

    def purge(self, now_s: float) -> None:
        """Free leases that expired (their gateway never settled them); oldest first."""
        leases = self.leases
        while leases:
            member, (expiry, micros) = next(iter(leases.items()))
            if expiry > now_s:
                return
            del leases[member]
            self.reserved -= micros


class LocalLimiter:
    """`Limiter` for one process. State lives in this object; nothing is shared between processes."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        lease_s: float = 900,
        prefix: str = "fg",
        hooks: LimiterHooks | None = None,
    ) -> None:
        if lease_s <= 0:
            raise InvalidRequest(f"lease_s={lease_s!r} is invalid: expected a positive number of seconds")
        self._clock = clock
        self._lease_s = float(lease_s)
        self._planner = Planner(KeySpace(prefix), lease_s)
        self._hooks = hooks or LimiterHooks()
        self._rates: dict[str, tuple[float, float]] = {}  # key -> (backlog, seen), ms
        self._budgets: dict[str, _Budget] = {}
        self._open: OrderedDict[str, float] = OrderedDict()  # marker key -> expiry (clock s)
        self._next_sweep = 0.0

    @property
    def degraded(self) -> bool:
        return False

    async def reserve(self, policy: LimitPolicy, *, cost_micros: int, tokens: int) -> Reservation:
        check_amounts(cost_micros, tokens)
        plan = self._planner.plan(policy, self._clock(), cost_micros, tokens)
        if plan.empty:
            return unlimited(plan)
        return finish(plan, self._evaluate(plan), "local", self._hooks)

    async def settle(self, reservation: Reservation, *, cost_micros: int, tokens: int) -> None:
        check_amounts(cost_micros, tokens)
        if self._open.pop(reservation.marker_key, None) is None:
            return  # settled before, never needed a settle, or expired twice over
        now_s = self._clock()
        now_ms = to_ms(now_s)
        delta = tokens - reservation.reserved_tokens
        if delta:
            for slot in reservation.token_limits:
                level, now = backlog(self._rates.get(slot.key), now_ms)
                level = correct(level, delta, slot.limit)
                if level > 0:
                    self._rates[slot.key] = (level, now)
                else:
                    self._rates.pop(slot.key, None)
        member = f"{reservation.id}:{reservation.reserved_micros}"
        for slot in reservation.budgets:
            budget = self._budget(slot, now_s)
            lease = budget.leases.pop(member, None)
            if lease is not None:
                budget.reserved -= lease[1]
            budget.spent += cost_micros

    async def release(self, reservation: Reservation) -> None:
        await self.settle(reservation, cost_micros=0, tokens=0)

    async def budget_status(self, rule: BudgetRule) -> BudgetStatus:
        now_s = self._clock()
        budget = self._budget(self._planner.budget_slot(rule, now_s), now_s)
        return budget_status(rule, self._planner.window(rule, now_s), budget.spent, budget.reserved)

    async def rebuild(self, rule: BudgetRule, spent_micros: int) -> None:
        check_amounts(spent_micros, 0)
        now_s = self._clock()
        self._budget(self._planner.budget_slot(rule, now_s), now_s).spent = spent_micros

    async def close(self) -> None:
        self._open.clear()

    def _budget(self, slot: BudgetSlot, now_s: float) -> _Budget:
        budget = self._budgets.get(slot.hash_key)
        if budget is None:
            budget = self._budgets[slot.hash_key] = _Budget(slot.expire_at_ms)
        else:
            budget.purge(now_s)
        return budget

    def _evaluate(self, plan: Plan) -> Outcome:
        now_s, now_ms = plan.now_s, plan.now_ms
        self._sweep(now_s)
        counters: list[tuple[int, int]] = []
        budgets = [self._budget(slot, now_s) for slot in plan.budgets]
        for index, (slot, budget) in enumerate(zip(plan.budgets, budgets, strict=True)):
            counters.append((budget.spent, budget.reserved))
            if budget.spent + budget.reserved + plan.cost > slot.rule.limit_micros:
                return Outcome(OVER_BUDGET, [], failed=index, budgets=counters)

        states = [backlog(self._rates.get(rate.key), now_ms) for rate in plan.rates]
        levels: list[float] = []
        failed, worst_wait = -1, 0.0
        for index, (rate, (level, _)) in enumerate(zip(plan.rates, states, strict=True)):
            allowed, new_level, wait = admit(level, plan.amount(rate), rate.limit)
            levels.append(new_level)
            if not allowed and (failed < 0 or wait > worst_wait):
                failed, worst_wait = index, wait
        if failed >= 0:
            readings = [_reading(rate, level) for rate, (level, _) in zip(plan.rates, states, strict=True)]
            return Outcome(RATE_LIMITED, readings, wait_ms=worst_wait, failed=failed)

        readings = []
        for rate, level, (_, now) in zip(plan.rates, levels, states, strict=True):
            if level > 0:
                self._rates[rate.key] = (level, now)
            readings.append(_reading(rate, level))
        if plan.cost:
            expiry = now_s + self._lease_s
            for budget in budgets:
                budget.reserved += plan.cost
                budget.leases[plan.lease_member] = (expiry, plan.cost)
        if plan.needs_marker:
            self._open[plan.marker_key] = now_s + 2 * self._lease_s
        return Outcome(OK, readings, budgets=[(b.spent, b.reserved) for b in budgets])

    def _sweep(self, now_s: float) -> None:
        """Drop expired reservation markers (cheap, oldest first) and, once a minute, idle state."""
        markers = self._open
        while markers:
            key, expiry = next(iter(markers.items()))
            if expiry > now_s:
                break
            del markers[key]
        if now_s < self._next_sweep:
            return
        self._next_sweep = now_s + SWEEP_INTERVAL_S
        now_ms = to_ms(now_s)
        for key in [k for k, state in self._rates.items() if backlog(state, now_ms)[0] <= 0]:
            del self._rates[key]
        for key in [k for k, b in self._budgets.items() if b.expire_at_s and b.expire_at_s <= now_s]:
            del self._budgets[key]


def _reading(rate: RateSlot, level: float) -> Reading:
    return Reading(rate.kind, rate.scope, rate.limit, remaining(level, rate.limit), level)
