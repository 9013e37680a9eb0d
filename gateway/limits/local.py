"""In-process rate limits and budgets with the same semantics as the Redis scripts.

Serves a single gateway process when no Redis is configured, and every replica on its own
while Redis is unreachable (outage policy "local"). Atomic because it never awaits inside.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from gateway.errors import InvalidRequest
from gateway.limits.base import (
    BudgetRule,
    BudgetSlot,
    BudgetStatus,
    LimiterHooks,
    LimitPolicy,
    Reservation,
)
from gateway.limits.gcra import admit, backlog, correct, remaining, to_ms
from gateway.limits.keyspace import KeySpace
from gateway.limits.plan import (
    OVER_BUDGET,
    RATE_LIMITED,
    Outcome,
    Planner,
    Template,
    accept,
    budget_status,
    check_amounts,
    readings_of,
    refuse,
    unlimited,
)
from gateway.limits.restore import BudgetRestorer, Restored, RestorePoint

SWEEP_INTERVAL_S = 60.0


class _Budget:
    """One budget period: counters plus open leases in expiry order (member -> (expiry_s, micros)).

    `spent` = `lake` (the lake's spend of requests that ended before `since_ms`; None until
    restored) + what was settled here since `since_ms`; `base` is dropped from `spent` by the next
    restore (what was counted before a reset).
    """

    __slots__ = ("spent", "reserved", "leases", "expire_at_s", "since_ms", "lake", "base")

    def __init__(self, expire_at_ms: int, since_ms: int) -> None:
        self.spent = 0
        self.reserved = 0
        self.leases: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self.expire_at_s = expire_at_ms / 1000.0 if expire_at_ms else 0.0
        self.since_ms = since_ms
        self.lake: int | None = None
        self.base = 0

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
    """`Limiter` for one process. State lives in this object; nothing is shared between processes.

    With a `restorer`, every budget period gets the usage lake's spend when this limiter first
    meets it (so spend survives a restart, and a new budget counts its period's earlier spend).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        lease_s: float = 900,
        prefix: str = "fg",
        hooks: LimiterHooks | None = None,
        restorer: BudgetRestorer | None = None,
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
        self._restorer = restorer

    @property
    def degraded(self) -> bool:
        return False

    async def reserve(self, policy: LimitPolicy, *, cost_micros: int, tokens: int) -> Reservation:
        check_amounts(cost_micros, tokens)
        now_s = self._clock()
        template = self._planner.template(policy, now_s)
        if template.empty:
            return unlimited(self._planner.new_id(), policy.org_id, cost_micros, tokens)
        return self._reserve(template, now_s, cost_micros, tokens)

    async def settle(self, reservation: Reservation, *, cost_micros: int, tokens: int) -> None:
        check_amounts(cost_micros, tokens)
        if self._open.pop(reservation.marker_key, None) is None:
            return  # settled before, never needed a settle, or expired twice over
        template: Template = reservation.template  # type: ignore[assignment]  # it had a marker
        now_s = self._clock()
        delta = tokens - reservation.reserved_tokens
        if delta:
            now_ms = to_ms(now_s)
            rates = self._rates
            for slot in template.token_slots:
                level, now = backlog(rates.get(slot.key), now_ms)
                level = correct(level, delta, slot.limit)
                if level > 0:
                    rates[slot.key] = (level, now)
                else:
                    rates.pop(slot.key, None)
        if template.budgets:
            member = f"{reservation.id}:{reservation.reserved_micros}"
            for slot in template.budgets:
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
        budget = self._budget(self._planner.budget_slot(rule, now_s), now_s, restore=False)
        budget.spent = budget.lake = spent_micros
        budget.base, budget.since_ms = 0, int(now_s * 1000)

    async def restore_budgets(self, rules: Sequence[BudgetRule], *, reset: bool = False) -> list[Restored]:
        if self._restorer is None:
            return []
        return await self._restorer.restore(self, rules, reset=reset)

    async def restore_points(self, rules: Sequence[BudgetRule], *, reset: bool = False) -> list[RestorePoint]:
        now_s = self._clock()
        now_ms = int(now_s * 1000)
        points = []
        for rule in rules:
            slot = self._planner.budget_slot(rule, now_s)
            budget = self._budget(slot, now_s, restore=False)
            if reset:
                budget.base, budget.lake, budget.since_ms = budget.spent, None, now_ms
            if budget.lake is None:
                points.append(RestorePoint(slot, self._planner.window(rule, now_s).start, budget.since_ms))
        return points

    async def add_lake_spend(self, point: RestorePoint, lake_micros: int) -> int:
        check_amounts(lake_micros, 0)
        budget = self._budgets.get(point.slot.hash_key)
        if budget is None or budget.since_ms != point.cut_ms:
            return 0  # the period ended and was dropped, or it was reset after this point was taken
        if budget.lake is None:
            added, budget.base = lake_micros - budget.base, 0
        elif lake_micros > budget.lake:
            added = lake_micros - budget.lake
        else:
            return 0
        budget.spent += added
        budget.lake = lake_micros
        return added

    def forget_budgets(self) -> None:
        """Drop every budget counter (open reservations still settle): used as the Redis outage
        fallback, the next outage must start from the lake again, not from this one's figures."""
        self._budgets.clear()

    def is_open(self, reservation: Reservation) -> bool:
        """True until `reservation` is settled, released or expired."""
        return reservation.marker_key in self._open

    async def close(self) -> None:
        self._open.clear()

    def _budget(self, slot: BudgetSlot, now_s: float, *, restore: bool = True) -> _Budget:
        budget = self._budgets.get(slot.hash_key)
        if budget is None:
            budget = self._budgets[slot.hash_key] = _Budget(slot.expire_at_ms, int(now_s * 1000))
            if restore and self._restorer is not None:
                self._restorer.request(self, slot)
        else:
            budget.purge(now_s)
        return budget

    def _reserve(self, template: Template, now_s: float, cost: int, tokens: int) -> Reservation:
        """Check and count one reserve, all or nothing (no await: nothing interleaves)."""
        self._sweep(now_s)
        budgets = [self._budget(slot, now_s) for slot in template.budgets] if template.budgets else ()
        counters: list[int] = []
        for index, budget in enumerate(budgets):
            spent, reserved = budget.spent, budget.reserved
            if spent + reserved + cost > template.budgets[index].rule.limit_micros:
                refuse(template, cost, tokens, Outcome(
                    OVER_BUDGET, [], failed=index, budgets=[(0, 0)] * index + [(spent, reserved)]), self._hooks)
            counters += (spent, reserved)

        now_ms = to_ms(now_s)
        rates = self._rates
        states = [backlog(rates.get(rate.key), now_ms) for rate in template.rates]
        levels: list[float] = []
        failed, worst_wait = -1, 0.0
        n_rpm = template.n_rpm
        for index, rate in enumerate(template.rates):
            allowed, new_level, wait = admit(states[index][0], 1 if index < n_rpm else tokens, rate.limit)
            levels.append(new_level)
            if not allowed and (failed < 0 or wait > worst_wait):
                failed, worst_wait = index, wait
        readings: list[float] = []
        if failed >= 0:
            for rate, (level, _) in zip(template.rates, states, strict=True):
                readings += (remaining(level, rate.limit), level)
            refuse(template, cost, tokens, Outcome(
                RATE_LIMITED, readings_of(template, readings), wait_ms=worst_wait, failed=failed), self._hooks)

        for rate, level, (_, now) in zip(template.rates, levels, states, strict=True):
            if level > 0:
                rates[rate.key] = (level, now)
            readings += (remaining(level, rate.limit), level)
        rid = self._planner.new_id()
        if cost and budgets:
            expiry = now_s + self._lease_s
            member = f"{rid}:{cost}"
            for index, budget in enumerate(budgets):
                budget.reserved += cost
                budget.leases[member] = (expiry, cost)
                counters[2 * index + 1] = budget.reserved
        reservation = accept(template, rid, "local", cost, tokens, readings, counters, self._hooks)
        if template.needs_settle:
            self._open[reservation.marker_key] = now_s + 2 * self._lease_s
        return reservation

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
