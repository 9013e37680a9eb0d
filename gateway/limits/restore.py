"""Budget counters get their spend from the usage lake: at start-up, and whenever one turns up without it.

The lake is the source of truth for spend. A counter holds the lake's spend of the requests that
ended before its cut, plus what was settled live since; see docs/limits.md ("Budgets after a restart").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

from gateway.errors import FleetgateError, ServiceUnavailable
from gateway.limits.base import BudgetRule, BudgetSlot, Limiter

log = logging.getLogger(__name__)

RETRY_S = 30.0  # after a failed restore (lake or Redis unreachable)
DEBOUNCE_S = 0.05  # requests arriving together (a new day, a Redis that lost its data) share one query
MAX_TRACKED = 100_000


class RestoreFailed(ServiceUnavailable):
    """The lake could not be read (or flushed) in time to restore budget counters."""

    code = "budget_restore_failed"


class SpendWindow(NamedTuple):
    """What the lake sums for one budget period: the spend of `org_id` (of `key_id` only, if set) in
    requests that started at or after `start_us` (None: any time) and ended before `cut_us` (epoch µs)."""

    org_id: str
    key_id: str | None
    start_us: int | None
    cut_us: int


LakeSpend = Callable[[Sequence[SpendWindow]], Awaitable[list[int]]]


class RestorePoint(NamedTuple):
    """A budget period whose counters need the lake's spend of requests that ended before `cut_ms`.

    Requests that ended at or after the cut were settled live into the counters (or reconciled
    into them after a Redis outage), so the two parts never overlap.
    """

    slot: BudgetSlot
    start_s: float | None  # the period's start (None: a "total" budget)
    cut_ms: int  # epoch ms

    @property
    def window(self) -> SpendWindow:
        rule = self.slot.rule
        return SpendWindow(rule.org_id, rule.scope_id if rule.scope == "key" else None,
                           None if self.start_s is None else round(self.start_s * 1_000_000), self.cut_ms * 1000)


@dataclass(frozen=True, slots=True)
class Restored:
    """One budget period after a restore: the lake's part and what this restore added to `spent`."""

    rule: BudgetRule
    period_start: datetime | None
    cut: datetime
    lake_micros: int
    added_micros: int


class Restorable(Protocol):
    """What a limiter offers the restorer (LocalLimiter and RedisLimiter)."""

    async def restore_points(self, rules: Sequence[BudgetRule], *, reset: bool = False) -> list[RestorePoint]:
        """The current periods of `rules` whose counters lack the lake's part, each with its cut.

        With `reset`, restart every one of them at now first: the next `add_lake_spend` replaces
        what was counted before now by the lake's figure (an operator's rebuild).
        """
        ...

    async def add_lake_spend(self, point: RestorePoint, lake_micros: int) -> int:
        """Raise the lake's part of `point`'s counters to `lake_micros`, adding the difference to
        `spent`; returns what was added. Idempotent, and a no-op for a stale point (reset since)."""
        ...


class BudgetRestorer:
    """Runs restores: one flush of this process's usage sink, then one grouped lake query per batch.

    Args:
        lake_spend: sums the lake for windows (off the event loop, bounded in time); raises a
            FleetgateError (RestoreFailed) when the lake cannot be read.
        flush: writes this process's usage events to the lake first (a restarted gateway's
            replayed spool included); None when there is nothing to flush.
        follow_up_s: the lake lags its writers (other replicas' spools, the stream writer) by about
            this long; a cut more recent than that is summed once more after it (idempotent).
        retry_s: a failed restore is tried again after this long.
    """

    def __init__(self, lake_spend: LakeSpend, *, flush: Callable[[], Awaitable[None]] | None = None,
                 follow_up_s: float = 30.0, retry_s: float = RETRY_S, debounce_s: float = DEBOUNCE_S,
                 clock: Callable[[], float] = time.time) -> None:
        self._lake_spend = lake_spend
        self._flush = flush
        self._follow_up_s = follow_up_s
        self._retry_s = retry_s
        self._debounce_s = debounce_s
        self._clock = clock
        self._queued: dict[Restorable, dict[str, BudgetRule]] = {}
        self._queued_keys: set[str] = set()
        self._not_before: dict[str, float] = {}  # hash key -> monotonic time: its restore failed
        self._drainer: asyncio.Task[None] | None = None
        self._retrying: dict[Restorable, dict[BudgetRule, None]] = {}
        self._retrier: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def restore(self, limiter: Restorable, rules: Sequence[BudgetRule], *, reset: bool = False,
                      announce: bool = True) -> list[Restored]:
        """Give the current periods of `rules` the lake's spend (what they lack of it).

        Raises:
            FleetgateError: the lake or the limiter's store is unreachable (a retry is scheduled).
        """
        try:
            return await self._restore(limiter, rules, reset, announce)
        except FleetgateError:
            self._retry_later(limiter, rules)
            raise

    def request(self, limiter: Restorable, slot: BudgetSlot) -> None:
        """Restore `slot`'s period soon, in the background. Cheap and never blocks: limiters call it
        when they meet counters without the lake's part (new period, new budget, data lost)."""
        key = slot.hash_key
        if self._closed or key in self._queued_keys or self._not_before.get(key, 0.0) > time.monotonic():
            return
        self._queued.setdefault(limiter, {})[key] = slot.rule
        self._queued_keys.add(key)
        if self._drainer is None:
            self._drainer = self._spawn(self._drain())

    def retry_now(self) -> None:
        """Forget the back-off of failed restores: what stopped them (e.g. a Redis outage) is over."""
        self._not_before.clear()

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- internals ---------------------------------------------------------------------------

    async def _restore(self, limiter: Restorable, rules: Sequence[BudgetRule], reset: bool,
                       announce: bool) -> list[Restored]:
        started = time.perf_counter()
        points = await limiter.restore_points(rules, reset=reset)
        if not points:
            return []
        amounts = await self._lake(points)
        results = await self._add_all(limiter, points, amounts)
        added = [r for r in results if r.added_micros]
        level = logging.INFO if announce or added else logging.DEBUG
        log.log(level, "budgets: restored %d budget period(s) from the usage lake in %.0f ms; %d changed, "
                "%+d micro-USD in all", len(results), (time.perf_counter() - started) * 1000, len(added),
                sum(r.added_micros for r in added))
        for r in added:
            _log_one(r, "")
        recent = [p for p in points if self._clock() * 1000 - p.cut_ms < self._follow_up_s * 1000]
        if recent:
            self._spawn(self._follow_up(limiter, recent))
        return results

    async def _lake(self, points: Sequence[RestorePoint]) -> list[int]:
        if self._flush is not None:
            await self._flush()
        return await self._lake_spend([p.window for p in points])

    @staticmethod
    async def _add_all(limiter: Restorable, points: Sequence[RestorePoint], amounts: list[int]) -> list[Restored]:
        async def add(point: RestorePoint, amount: int) -> Restored:
            added = await limiter.add_lake_spend(point, amount)
            start = None if point.start_s is None else datetime.fromtimestamp(point.start_s, UTC)
            return Restored(point.slot.rule, start, datetime.fromtimestamp(point.cut_ms / 1000, UTC), amount, added)

        # Concurrent: with Redis, the calls are pipelined rather than one round trip after another.
        return list(await asyncio.gather(*(add(p, a) for p, a in zip(points, amounts, strict=True))))

    async def _follow_up(self, limiter: Restorable, points: list[RestorePoint]) -> None:
        """Sum the same windows again once the lake has caught up with their cut."""
        due = max(p.cut_ms for p in points) / 1000 + self._follow_up_s
        await asyncio.sleep(max(0.0, due - self._clock()))
        try:
            results = await self._add_all(limiter, points, await self._lake(points))
        except FleetgateError as e:
            log.warning("budgets: follow-up restore of %d budget period(s) failed: %s", len(points), e.message)
            return
        for r in results:
            if r.added_micros:
                _log_one(r, " (late rows)")

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(self._debounce_s)
            while self._queued:
                queued, self._queued = self._queued, {}
                for limiter, by_key in queued.items():
                    try:
                        await self.restore(limiter, list(by_key.values()), announce=False)
                    except FleetgateError as e:
                        log.warning("budgets: restoring %d budget period(s) from the lake failed, retrying in "
                                    "%.0f s: %s", len(by_key), self._retry_s, e.message)
                        # Flags keep coming from every reserve meanwhile: ignore them until the retry.
                        if len(self._not_before) > MAX_TRACKED:
                            self._not_before.clear()
                        until = time.monotonic() + self._retry_s
                        self._not_before.update(dict.fromkeys(by_key, until))
                    finally:
                        self._queued_keys.difference_update(by_key)
        finally:
            self._drainer = None

    def _retry_later(self, limiter: Restorable, rules: Sequence[BudgetRule]) -> None:
        """Try `rules` again after retry_s (one retry task for all failures, however many)."""
        if self._closed:
            return
        self._retrying.setdefault(limiter, {}).update(dict.fromkeys(rules))
        if self._retrier is None:
            self._retrier = self._spawn(self._retry_loop())

    async def _retry_loop(self) -> None:
        try:
            while self._retrying:
                await asyncio.sleep(self._retry_s)
                retrying, self._retrying = self._retrying, {}
                for limiter, rules in retrying.items():
                    try:
                        await self._restore(limiter, list(rules), False, False)
                    except FleetgateError as e:
                        log.warning("budgets: restore retry failed, retrying in %.0f s: %s", self._retry_s,
                                    e.message)
                        self._retrying.setdefault(limiter, {}).update(rules)
        finally:
            self._retrier = None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _log_one(r: Restored, note: str) -> None:
    rule = r.rule
    log.info("budgets: %s budget of %s %s%s: %+d micro-USD from the lake%s (its spend of requests that ended "
             "before %s: %d)", rule.period, rule.scope, rule.scope_id,
             "" if rule.scope == "org" else f" (org {rule.org_id})", r.added_micros, note,
             r.cut.isoformat(timespec="milliseconds"), r.lake_micros)


async def restore_at_start(limiter: Limiter, rules: Sequence[BudgetRule]) -> list[Restored]:
    """Before a gateway serves: every budget's current period gets its spend from the lake.

    A failure (lake or Redis unreachable) is logged, not raised: the gateway serves, budgets count
    live spend meanwhile, and the restore is retried in the background until it succeeds.
    """
    if not rules:
        return []
    try:
        return await limiter.restore_budgets(rules)
    except FleetgateError as e:
        log.error("budgets: could not restore %d budget(s) from the usage lake at start-up, retrying in the "
                  "background (until then they count only spend from now on): %s", len(rules), e.message)
        return []
