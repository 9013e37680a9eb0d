"""Global rate limits and budgets in Redis: one Lua script per reserve and per settle.

Every replica sees the same counters, so limits hold across processes; when Redis is
unreachable the limiter degrades to the configured outage policy and never hangs.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

from redis.exceptions import NoScriptError, RedisError

from gateway.errors import InvalidRequest, ServiceUnavailable
from gateway.limits.base import (
    OUTAGE_POLICIES,
    BudgetRule,
    BudgetSlot,
    BudgetStatus,
    LimiterHooks,
    LimitPolicy,
    Reservation,
)
from gateway.limits.gcra import EPOCH_BASE_MS, to_ms
from gateway.limits.keyspace import KeySpace
from gateway.limits.local import LocalLimiter
from gateway.limits.plan import (
    OK,
    OVER_BUDGET,
    PERIOD_MARGIN_S,
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
from gateway.limits.reconcile import SpendJournal
from gateway.limits.restore import BudgetRestorer, Restored, RestorePoint

log = logging.getLogger(__name__)

# What "Redis is unreachable" looks like: redis-py errors, our timeout, socket errors.
OUTAGE_ERRORS = (RedisError, TimeoutError, OSError)
NEVER_MS = 1e15  # reserve.lua's "this request never fits"
MAX_PENDING_SETTLES = 100_000
# A reconcile batch whose reply was lost may be re-sent until Redis answers again; its marker
# must outlive any outage it could be re-sent after.
RECONCILE_MARKER_TTL_MS = PERIOD_MARGIN_S * 1000


class ScriptClient(Protocol):
    """All RedisLimiter needs from a client: redis.asyncio.Redis (or RedisCluster) fits, and so
    would a leaner pipelined RESP connection for the hot path."""

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any: ...

    async def script_load(self, script: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class _Script:
    source: str
    sha: str

    @classmethod
    def load(cls, name: str) -> _Script:
        source = resources.files("gateway.limits").joinpath(name).read_text(encoding="utf-8")
        return cls(source, hashlib.sha1(source.encode()).hexdigest())  # noqa: S324 - Redis names scripts by SHA-1


class _ScriptArgs:
    """The EVALSHA arguments of one template that do not change per request (see the scripts'
    headers): key lists after the marker, and the tail of the packed argument string."""

    __slots__ = ("reserve_numkeys", "reserve_keys", "reserve_tail", "settle_numkeys", "settle_keys", "settle_tail")

    def __init__(self, template: Template, lease_ms: int) -> None:
        budget_keys = tuple(key for slot in template.budgets for key in (slot.hash_key, slot.lease_key))
        self.reserve_keys = (*(rate.key for rate in template.rates), *budget_keys)
        self.reserve_numkeys = 1 + len(self.reserve_keys)
        self.reserve_tail = "|".join(map(str, (
            EPOCH_BASE_MS, lease_ms, 2 * lease_ms if template.needs_settle else 0,
            len(template.rates), template.n_rpm, len(template.budgets),
            *(rate.limit for rate in template.rates),
            *(value for slot in template.budgets for value in (slot.rule.limit_micros, slot.expire_at_ms)),
        )))
        self.settle_keys = (*(slot.key for slot in template.token_slots), *budget_keys)
        self.settle_numkeys = 1 + len(self.settle_keys)
        self.settle_tail = "|".join(map(str, (
            EPOCH_BASE_MS, len(template.token_slots), len(template.budgets),
            *(slot.limit for slot in template.token_slots), *(slot.expire_at_ms for slot in template.budgets),
        )))


class RedisLimiter:
    """`Limiter` backed by Redis; falls back per `outage_policy` while Redis is unreachable.

    Args:
        redis: a redis.asyncio client, or anything with its evalsha/script_load (the caller owns
            and closes it). Errors must be redis.exceptions.RedisError (NoScriptError for NOSCRIPT).
        prefix: key prefix (keys.KeySpace).
        lease_s: a reservation not settled within this time is freed (its gateway crashed).
        timeout_s: budget for one Redis call; slower counts as an outage.
        clock: epoch seconds; passed into the scripts, which never call TIME.
        fallback: limiter used under policy "local" (default: a LocalLimiter with the same clock).
            What it settles is added to the Redis counters once Redis answers (reconcile.lua).
        restorer: gives budget counters the usage lake's spend where they lack it (restore.py);
            None: counters are what Redis holds.
        outage_policy: "local" (per-replica limits), "fail-open" (no limits) or "fail-closed" (503).
        probe_interval_s: while degraded, at most one request per interval tries Redis.
        max_inflight: Redis calls in flight at once; more wait (within timeout_s). Keep it below
            the client's pool size (redis-py's async pool raises instead of waiting when empty).
    """

    def __init__(
        self,
        redis: ScriptClient,
        *,
        prefix: str = "fg",
        lease_s: float = 900,
        timeout_s: float = 0.25,
        clock: Callable[[], float] = time.time,
        fallback: LocalLimiter | None = None,
        outage_policy: str = "local",
        hooks: LimiterHooks | None = None,
        probe_interval_s: float = 1.0,
        max_inflight: int = 50,
        restorer: BudgetRestorer | None = None,
    ) -> None:
        if outage_policy not in OUTAGE_POLICIES:
            raise InvalidRequest(
                f"outage_policy={outage_policy!r} is invalid: expected one of {', '.join(OUTAGE_POLICIES)}"
            )
        if lease_s <= 0 or timeout_s <= 0 or probe_interval_s < 0 or max_inflight < 1:
            raise InvalidRequest("lease_s, timeout_s and max_inflight must be positive and probe_interval_s >= 0")
        self._redis = redis
        # A client that bounds each call itself (FastRedis) needs no extra timeout scope.
        self._self_bounded = bool(getattr(redis, "bounds_each_call", False))
        self._clock = clock
        self._lease_ms = int(lease_s * 1000)
        self._timeout_s = timeout_s
        self._policy = outage_policy
        self._hooks = hooks or LimiterHooks()
        self._fallback = fallback or LocalLimiter(clock=clock, lease_s=lease_s, prefix=prefix, hooks=hooks)
        self._restorer = restorer
        self._planner = Planner(KeySpace(prefix), lease_s)
        self._probe_interval_s = probe_interval_s
        self._inflight = asyncio.Semaphore(max_inflight)
        self._reserve_script = _Script.load("reserve.lua")
        self._settle_script = _Script.load("settle.lua")
        self._budget_script = _Script.load("budget.lua")
        self._restore_script = _Script.load("restore.lua")
        self._reconcile_script = _Script.load("reconcile.lua")
        self._degraded = False
        self._next_probe = 0.0
        self._pending: deque[tuple[Reservation, int, int]] = deque()
        self._journal = SpendJournal(self._planner.new_id)
        self._recover_task: asyncio.Task[None] | None = None
        self._orphans: set[asyncio.Task[None]] = set()  # releases of reservations whose caller left

    @property
    def degraded(self) -> bool:
        return self._degraded

    @property
    def pending_settles(self) -> int:
        """Settles made while Redis was down, replayed when it is back."""
        return len(self._pending)

    @property
    def pending_reconcile_micros(self) -> int:
        """Spend the local fallback settled that Redis has not counted yet."""
        return self._journal.micros

    async def reserve(self, policy: LimitPolicy, *, cost_micros: int, tokens: int) -> Reservation:
        check_amounts(cost_micros, tokens)
        now_s = self._clock()
        template = self._planner.template(policy, now_s)
        if template.empty:
            return unlimited(self._planner.new_id(), policy.org_id, cost_micros, tokens)
        if not self._degraded or self._try_redis():
            args = template.script_args or self._script_args(template)
            rid = self._planner.new_id()
            call = (template.marker_prefix + rid, *args.reserve_keys,
                    f"{to_ms(now_s):.3f}|{rid}|{cost_micros}|{tokens}|{args.reserve_tail}")
            try:
                try:
                    raw = await self._send(self._reserve_script, args.reserve_numkeys, call)
                except NoScriptError:
                    raw = await self._load_and_send(self._reserve_script, args.reserve_numkeys, call)
            except OUTAGE_ERRORS as e:
                self._went_down(e)
            except asyncio.CancelledError:
                # The caller left (a client disconnect) while the script was sent: it may run, or
                # have run. Free whatever it reserved; settle.lua is idempotent and, on the same
                # pipelined connection, runs after it.
                self._orphaned(Reservation(rid, template.org_id, "redis", cost_micros, tokens,
                                           marker_key=template.marker_prefix + rid, template=template))
                raise
            else:
                if self._degraded:
                    self._came_up()
                values = [*map(int, raw.split(b"," if type(raw) is bytes else ","))]
                if values[0] != OK:
                    refuse(template, cost_micros, tokens, self._refusal(template, values), self._hooks)
                if values[1]:
                    self._unrestored(template.budgets, values[1])
                end = 3 + 2 * len(template.rates)
                return accept(template, rid, "redis", cost_micros, tokens, values[3:end], values[end:], self._hooks)
        if self._policy == "local":
            return await self._fallback.reserve(policy, cost_micros=cost_micros, tokens=tokens)
        if self._policy == "fail-open":
            return unlimited(self._planner.new_id(), policy.org_id, cost_micros, tokens)
        raise ServiceUnavailable(
            "Rate limits and budgets are temporarily unavailable; please retry.",
            code="limits_unavailable",
            headers={"Retry-After": "1"},
        )

    async def settle(self, reservation: Reservation, *, cost_micros: int, tokens: int) -> None:
        check_amounts(cost_micros, tokens)
        if reservation.origin != "redis":
            if reservation.origin == "local":
                await self._settle_local(reservation, cost_micros, tokens)
            return
        template = reservation.template
        if template is None or not template.needs_settle:
            return
        if not self._degraded or self._try_redis():
            # _settle_now inlined: settle runs on every request.
            numkeys, call = self._settle_call(reservation, cost_micros, tokens)
            try:
                try:
                    await self._send(self._settle_script, numkeys, call)
                except NoScriptError:
                    await self._load_and_send(self._settle_script, numkeys, call)
            except OUTAGE_ERRORS as e:
                self._went_down(e)
            else:
                if self._degraded:
                    self._came_up()
                return
        if len(self._pending) >= MAX_PENDING_SETTLES:
            dropped, _, _ = self._pending.popleft()
            log.warning("limits: dropped pending settle %s (queue full); rebuild budgets from the lake", dropped.id)
        self._pending.append((reservation, cost_micros, tokens))

    def _orphaned(self, reservation: Reservation) -> None:
        if reservation.needs_settle:
            task = asyncio.get_running_loop().create_task(self.release(reservation))
            self._orphans.add(task)
            task.add_done_callback(self._orphans.discard)

    async def release(self, reservation: Reservation) -> None:
        await self.settle(reservation, cost_micros=0, tokens=0)

    async def budget_status(self, rule: BudgetRule) -> BudgetStatus:
        now_s = self._clock()
        spent, reserved = await self._budget_call(rule, now_s, "get", 0)
        return budget_status(rule, self._planner.window(rule, now_s), spent, reserved)

    async def rebuild(self, rule: BudgetRule, spent_micros: int) -> None:
        check_amounts(spent_micros, 0)
        await self._budget_call(rule, self._clock(), "set", spent_micros)

    async def restore_budgets(self, rules: Sequence[BudgetRule], *, reset: bool = False) -> list[Restored]:
        if self._restorer is None:
            return []
        return await self._restorer.restore(self, rules, reset=reset)

    async def restore_points(self, rules: Sequence[BudgetRule], *, reset: bool = False) -> list[RestorePoint]:
        now_s = self._clock()
        slots = [self._planner.budget_slot(rule, now_s) for rule in rules]
        mode = "reset" if reset else "probe"
        cuts = await asyncio.gather(*(self._restore_call(slot, now_s, mode) for slot in slots),
                                    return_exceptions=True)
        points = []
        for slot, cut in zip(slots, cuts, strict=True):
            if isinstance(cut, BaseException):
                raise cut
            if cut >= 0:
                points.append(RestorePoint(slot, self._planner.window(slot.rule, now_s).start, cut))
        return points

    async def add_lake_spend(self, point: RestorePoint, lake_micros: int) -> int:
        check_amounts(lake_micros, 0)
        return await self._restore_call(point.slot, self._clock(), "add", point.cut_ms, lake_micros)

    async def close(self) -> None:
        """Stop recovering; send what is still pending if Redis answers (best effort, bounded)."""
        task, self._recover_task = self._recover_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._orphans:
            await asyncio.gather(*self._orphans, return_exceptions=True)
        if not self._degraded:
            if self._pending:
                await self._replay()
            await self._reconcile()
        if len(self._journal):
            log.warning("limits: %d micro-USD of spend made during the Redis outage was not added to Redis; "
                        "`opsctl budget rebuild` takes it from the lake", self._journal.micros)
        await self._fallback.close()

    # --- Redis calls -----------------------------------------------------------------------

    def _send(self, script: _Script, numkeys: int, call: tuple[Any, ...]) -> Awaitable[Any]:
        """EVALSHA (raises NoScriptError when Redis does not have the script: see _load_and_send)."""
        if self._self_bounded:
            # The client bounds every call by its own timeout and has no pool to exhaust: no
            # timeout scope, no semaphore, no extra coroutine (~25 µs a pair on the hot path).
            return self._redis.evalsha(script.sha, numkeys, *call)
        return self._bounded(script, numkeys, call, load=False)

    async def _load_and_send(self, script: _Script, numkeys: int, call: tuple[Any, ...]) -> Any:
        """Load the script, then EVALSHA (after a Redis restart or SCRIPT FLUSH)."""
        if self._self_bounded:
            await self._redis.script_load(script.source)
            return await self._redis.evalsha(script.sha, numkeys, *call)
        return await self._bounded(script, numkeys, call, load=True)

    async def _bounded(self, script: _Script, numkeys: int, call: tuple[Any, ...], *, load: bool) -> Any:
        async with asyncio.timeout(self._timeout_s), self._inflight:
            if load:
                await self._redis.script_load(script.source)
            return await self._redis.evalsha(script.sha, numkeys, *call)

    async def _call(self, script: _Script, numkeys: int, call: tuple[Any, ...]) -> Any:
        """EVALSHA, loading the script first if Redis does not have it."""
        try:
            return await self._send(script, numkeys, call)
        except NoScriptError:
            return await self._load_and_send(script, numkeys, call)

    def _script_args(self, template: Template) -> _ScriptArgs:
        args = template.script_args = _ScriptArgs(template, self._lease_ms)
        return args

    @staticmethod
    def _refusal(template: Template, values: list[int]) -> Outcome:
        """The Outcome of a refusing reserve.lua reply (see its header)."""
        status, wait, failed = values[0], values[1], values[2]
        if status == OVER_BUDGET:
            return Outcome(status, [], failed=failed, budgets=[(0, 0)] * failed + [(values[3], values[4])])
        return Outcome(status, readings_of(template, values[3:]),
                       wait_ms=float("inf") if wait >= NEVER_MS else float(wait), failed=failed)

    def _settle_call(self, reservation: Reservation, cost_micros: int, tokens: int) -> tuple[int, tuple[Any, ...]]:
        """(numkeys, keys and packed argument) of settle.lua for `reservation`."""
        args: _ScriptArgs = reservation.template.script_args  # type: ignore[union-attr]  # made in Redis: has them
        return args.settle_numkeys, (
            reservation.marker_key, *args.settle_keys,
            f"{to_ms(self._clock()):.3f}|{reservation.id}|{reservation.reserved_micros}|{cost_micros}|"
            f"{tokens - reservation.reserved_tokens}|{args.settle_tail}",
        )

    async def _settle_now(self, reservation: Reservation, cost_micros: int, tokens: int) -> bool:
        """Run settle.lua; False (and degraded) when Redis is unreachable."""
        try:
            await self._call(self._settle_script, *self._settle_call(reservation, cost_micros, tokens))
        except OUTAGE_ERRORS as e:
            self._went_down(e)
            return False
        self._came_up()
        return True

    async def _budget_call(self, rule: BudgetRule, now_s: float, mode: str, spent: int) -> tuple[int, int]:
        slot = self._planner.budget_slot(rule, now_s)
        ttl_ms = max(1, slot.expire_at_ms - int(now_s * 1000)) if slot.expire_at_ms else 0
        args = [to_ms(now_s), mode, spent, ttl_ms, int(now_s * 1000)]
        try:
            raw = await self._call(self._budget_script, 2, (slot.hash_key, slot.lease_key, "|".join(map(str, args))))
        except OUTAGE_ERRORS as e:
            self._went_down(e)
            raise ServiceUnavailable("Budget counters are unreachable (Redis is down).", code="limits_unavailable") from e
        self._came_up()
        return int(raw[0]), int(raw[1])

    async def _restore_call(self, slot: BudgetSlot, now_s: float, mode: str, cut_ms: int = 0,
                            lake: int = 0) -> int:
        """restore.lua in `mode` for one budget period (see its header)."""
        now_ms = int(now_s * 1000)
        ttl_ms = max(1, slot.expire_at_ms - now_ms) if slot.expire_at_ms else 0
        arg = f"{mode}|{now_ms}|{ttl_ms}|{cut_ms}|{lake}"
        try:
            raw = await self._call(self._restore_script, 1, (slot.hash_key, arg))
        except OUTAGE_ERRORS as e:
            self._went_down(e)
            raise ServiceUnavailable("Budget counters are unreachable (Redis is down).",
                                     code="limits_unavailable") from e
        self._came_up()
        return int(raw)

    # --- after an outage: the lake's part, and what the local fallback settled ------------------

    def _unrestored(self, slots: tuple[BudgetSlot, ...], mask: int) -> None:
        """Budgets whose counters lack the lake's part (flagged by a script): have it added."""
        if self._restorer is None:
            return
        for index, slot in enumerate(slots):
            if mask >> index & 1:
                self._restorer.request(self, slot)

    async def _settle_local(self, reservation: Reservation, cost_micros: int, tokens: int) -> None:
        """Settle in the fallback, and keep the spend until Redis counts it too (reconcile.lua)."""
        first = self._fallback.is_open(reservation)
        await self._fallback.settle(reservation, cost_micros=cost_micros, tokens=tokens)
        if first and cost_micros and reservation.budgets:
            self._journal.add(reservation.org_id, reservation.budgets, cost_micros, int(self._clock() * 1000))
            if not self._degraded:
                self._start_recovery()

    def _start_recovery(self) -> None:
        if self._recover_task is None:
            self._recover_task = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        try:
            await self._replay()
            await self._reconcile()
        finally:
            self._recover_task = None

    async def _reconcile(self) -> None:
        """Add what the fallback settled to the Redis counters, batch by batch, each exactly once."""
        journal, keys = self._journal, self._planner.keys
        while not self._degraded:
            if not journal.batches:
                journal.seal()
                if not journal.batches:
                    return
            batch = journal.batches[0]
            call = (keys.reconcile_marker(batch.org_id, batch.id), *(slot.hash_key for slot in batch.slots),
                    "|".join(map(str, (int(self._clock() * 1000), RECONCILE_MARKER_TTL_MS, len(batch.slots),
                                       *(slot.expire_at_ms for slot in batch.slots), len(batch.buckets),
                                       *(f"{a}:{b}:{m}" for a, b, m in batch.buckets)))))
            try:
                raw = await self._call(self._reconcile_script, 1 + len(batch.slots), call)
            except OUTAGE_ERRORS as e:
                self._went_down(e)
                return
            journal.done()
            applied, unrestored = map(int, raw.split(b"," if type(raw) is bytes else ","))
            log.info("limits: reconciled %d micro-USD that org %s spent during the Redis outage (batch %s%s)",
                     batch.micros, batch.org_id, batch.id, "" if applied else ", applied before")
            if unrestored:
                self._unrestored(batch.slots, unrestored)

    # --- outage state ----------------------------------------------------------------------

    def _try_redis(self) -> bool:
        """Always while healthy; while degraded, one probe per interval (the rest skip Redis)."""
        if not self._degraded:
            return True
        now = time.monotonic()
        if now < self._next_probe:
            return False
        self._next_probe = now + self._probe_interval_s
        return True

    def _went_down(self, error: BaseException) -> None:
        self._next_probe = time.monotonic() + self._probe_interval_s
        if not self._degraded:
            self._degraded = True
            log.warning("limits: Redis unreachable (%s: %s); outage policy %r", type(error).__name__, error,
                        self._policy)
            self._hooks.degraded_changed(True)

    def _came_up(self) -> None:
        if not self._degraded:
            return
        self._degraded = False
        log.warning("limits: Redis reachable again; %d pending settles to replay, %d micro-USD of local spend to "
                    "reconcile", len(self._pending), self._journal.micros)
        self._hooks.degraded_changed(False)
        # What was settled up to now is one set of batches; later settles (of reservations still
        # open) go into new ones, so no bucket straddles this moment.
        self._journal.seal()
        # The next outage starts its local counters from the lake again, not from this one's.
        self._fallback.forget_budgets()
        if self._restorer is not None:
            self._restorer.retry_now()  # restores that failed in the outage; Redis may have lost its data
        if self._pending or self._journal.batches:
            self._start_recovery()

    async def _replay(self) -> None:
        """Apply settles queued during the outage; settle.lua is idempotent, so a repeat is harmless."""
        while self._pending and not self._degraded:
            reservation, cost_micros, tokens = self._pending[0]
            if not await self._settle_now(reservation, cost_micros, tokens):
                return
            self._pending.popleft()
