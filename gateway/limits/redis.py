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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

from redis.exceptions import NoScriptError, RedisError

from gateway.errors import InvalidRequest, ServiceUnavailable
from gateway.limits.base import (
    OUTAGE_POLICIES,
    BudgetRule,
    BudgetStatus,
    Limiter,
    LimiterHooks,
    LimitPolicy,
    Reservation,
)
from gateway.limits.gcra import to_ms
from gateway.limits.headers import Reading
from gateway.limits.keys import KeySpace
from gateway.limits.local import LocalLimiter
from gateway.limits.plan import (
    OK,
    OVER_BUDGET,
    Outcome,
    Plan,
    Planner,
    budget_status,
    check_amounts,
    finish,
    unlimited,
)

log = logging.getLogger(__name__)

# What "Redis is unreachable" looks like: redis-py errors, our timeout, socket errors.
OUTAGE_ERRORS = (RedisError, TimeoutError, OSError)
NEVER_MS = 1e15  # reserve.lua's "this request never fits"
MAX_PENDING_SETTLES = 100_000


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
        fallback: Limiter | None = None,
        outage_policy: str = "local",
        hooks: LimiterHooks | None = None,
        probe_interval_s: float = 1.0,
        max_inflight: int = 50,
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
        self._fallback: Limiter = fallback or LocalLimiter(clock=clock, lease_s=lease_s, prefix=prefix, hooks=hooks)
        self._planner = Planner(KeySpace(prefix), lease_s)
        self._probe_interval_s = probe_interval_s
        self._inflight = asyncio.Semaphore(max_inflight)
        self._reserve_script = _Script.load("reserve.lua")
        self._settle_script = _Script.load("settle.lua")
        self._budget_script = _Script.load("budget.lua")
        self._degraded = False
        self._next_probe = 0.0
        self._pending: deque[tuple[Reservation, int, int]] = deque()
        self._replay_task: asyncio.Task[None] | None = None

    @property
    def degraded(self) -> bool:
        return self._degraded

    @property
    def pending_settles(self) -> int:
        """Settles made while Redis was down, replayed when it is back."""
        return len(self._pending)

    async def reserve(self, policy: LimitPolicy, *, cost_micros: int, tokens: int) -> Reservation:
        check_amounts(cost_micros, tokens)
        plan = self._planner.plan(policy, self._clock(), cost_micros, tokens)
        if plan.empty:
            return unlimited(plan)
        if self._try_redis():
            keys, args = self._reserve_call(plan)
            try:
                raw = await self._eval(self._reserve_script, keys, args)
            except OUTAGE_ERRORS as e:
                self._went_down(e)
            else:
                self._came_up()
                return finish(plan, self._outcome(plan, raw), "redis", self._hooks)
        if self._policy == "local":
            return await self._fallback.reserve(policy, cost_micros=cost_micros, tokens=tokens)
        if self._policy == "fail-open":
            return unlimited(plan)
        raise ServiceUnavailable(
            "Rate limits and budgets are temporarily unavailable; please retry.",
            code="limits_unavailable",
            headers={"Retry-After": "1"},
        )

    async def settle(self, reservation: Reservation, *, cost_micros: int, tokens: int) -> None:
        check_amounts(cost_micros, tokens)
        if reservation.origin == "local":
            await self._fallback.settle(reservation, cost_micros=cost_micros, tokens=tokens)
            return
        if reservation.origin != "redis" or not reservation.needs_settle:
            return
        if self._try_redis() and await self._settle_now(reservation, cost_micros, tokens):
            return
        if len(self._pending) >= MAX_PENDING_SETTLES:
            dropped, _, _ = self._pending.popleft()
            log.warning("limits: dropped pending settle %s (queue full); rebuild budgets from the lake", dropped.id)
        self._pending.append((reservation, cost_micros, tokens))

    async def release(self, reservation: Reservation) -> None:
        await self.settle(reservation, cost_micros=0, tokens=0)

    async def budget_status(self, rule: BudgetRule) -> BudgetStatus:
        now_s = self._clock()
        spent, reserved = await self._budget_call(rule, now_s, "get", 0)
        return budget_status(rule, self._planner.window(rule, now_s), spent, reserved)

    async def rebuild(self, rule: BudgetRule, spent_micros: int) -> None:
        check_amounts(spent_micros, 0)
        await self._budget_call(rule, self._clock(), "set", spent_micros)

    async def close(self) -> None:
        """Stop replaying; flush what is still pending if Redis answers (best effort, bounded)."""
        task, self._replay_task = self._replay_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._pending and not self._degraded:
            await self._replay()
        await self._fallback.close()

    # --- Redis calls -----------------------------------------------------------------------

    async def _eval(self, script: _Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA with the arguments packed into one string (each argument costs redis-py CPU)."""
        packed = "|".join(map(str, args))
        if self._self_bounded:
            # The client bounds every call by its own timeout and has no pool to exhaust:
            # skip the timeout scope and semaphore (~25 µs a pair on the hot path).
            return await self._evalsha(script, keys, packed)
        async with asyncio.timeout(self._timeout_s), self._inflight:
            return await self._evalsha(script, keys, packed)

    async def _evalsha(self, script: _Script, keys: Sequence[str], packed: str) -> Any:
        try:
            return await self._redis.evalsha(script.sha, len(keys), *keys, packed)
        except NoScriptError:
            await self._redis.script_load(script.source)  # after a restart or SCRIPT FLUSH
            return await self._redis.evalsha(script.sha, len(keys), *keys, packed)

    def _ttl_ms(self, expire_at_ms: int, now_s: float) -> int:
        return max(1, expire_at_ms - int(now_s * 1000)) if expire_at_ms else 0

    def _reserve_call(self, plan: Plan) -> tuple[list[str], list[Any]]:
        keys = [plan.marker_key]
        args: list[Any] = [
            plan.now_ms, self._lease_ms, plan.lease_member, plan.cost, len(plan.rates), len(plan.budgets),
            2 * self._lease_ms if plan.needs_marker else 0,
        ]
        for rate in plan.rates:
            keys.append(rate.key)
            args += (rate.limit, plan.amount(rate))
        for slot in plan.budgets:
            keys += (slot.hash_key, slot.lease_key)
            args += (slot.rule.limit_micros, self._ttl_ms(slot.expire_at_ms, plan.now_s))
        return keys, args

    @staticmethod
    def _outcome(plan: Plan, raw: bytes | str) -> Outcome:
        values = [int(v) for v in (raw.decode() if isinstance(raw, bytes) else raw).split(",")]
        status, wait, failed = values[0], values[1], values[2]
        if status == OVER_BUDGET:
            return Outcome(status, [], failed=failed, budgets=[(0, 0)] * failed + [(values[3], values[4])])
        readings = [
            Reading(rate.kind, rate.scope, rate.limit, values[3 + 2 * i], float(values[4 + 2 * i]))
            for i, rate in enumerate(plan.rates)
        ]
        if status != OK:
            return Outcome(status, readings, wait_ms=float("inf") if wait >= NEVER_MS else float(wait), failed=failed)
        base = 3 + 2 * len(plan.rates)
        counters = [(values[base + 2 * i], values[base + 2 * i + 1]) for i in range(len(plan.budgets))]
        return Outcome(status, readings, budgets=counters)

    async def _settle_now(self, reservation: Reservation, cost_micros: int, tokens: int) -> bool:
        """Run settle.lua; False (and degraded) when Redis is unreachable."""
        now_s = self._clock()
        keys = [reservation.marker_key]
        args: list[Any] = [
            to_ms(now_s), f"{reservation.id}:{reservation.reserved_micros}", reservation.reserved_micros,
            cost_micros, tokens - reservation.reserved_tokens, len(reservation.token_limits),
            len(reservation.budgets),
        ]
        for token_slot in reservation.token_limits:
            keys.append(token_slot.key)
            args.append(token_slot.limit)
        for slot in reservation.budgets:
            keys += (slot.hash_key, slot.lease_key)
        args += [self._ttl_ms(slot.expire_at_ms, now_s) for slot in reservation.budgets]
        try:
            await self._eval(self._settle_script, keys, args)
        except OUTAGE_ERRORS as e:
            self._went_down(e)
            return False
        self._came_up()
        return True

    async def _budget_call(self, rule: BudgetRule, now_s: float, mode: str, spent: int) -> tuple[int, int]:
        slot = self._planner.budget_slot(rule, now_s)
        args = [to_ms(now_s), mode, spent, self._ttl_ms(slot.expire_at_ms, now_s)]
        try:
            raw = await self._eval(self._budget_script, [slot.hash_key, slot.lease_key], args)
        except OUTAGE_ERRORS as e:
            self._went_down(e)
            raise ServiceUnavailable("Budget counters are unreachable (Redis is down).", code="limits_unavailable") from e
        self._came_up()
        return int(raw[0]), int(raw[1])

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
        log.warning("limits: Redis reachable again; %d pending settles to replay", len(self._pending))
        self._hooks.degraded_changed(False)
        if self._pending and self._replay_task is None:
            self._replay_task = asyncio.get_running_loop().create_task(self._replay_in_background())

    async def _replay_in_background(self) -> None:
        try:
            await self._replay()
        finally:
            self._replay_task = None

    async def _replay(self) -> None:
        """Apply settles queued during the outage; settle.lua is idempotent, so a repeat is harmless."""
        while self._pending and not self._degraded:
            reservation, cost_micros, tokens = self._pending[0]
            if not await self._settle_now(reservation, cost_micros, tokens):
                return
            self._pending.popleft()
