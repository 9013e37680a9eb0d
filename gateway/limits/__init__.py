"""Budgets and rate limits that hold under any concurrency, across replicas.

`Limiter` is the seam; `RedisLimiter` enforces globally (atomic Lua), `LocalLimiter` in one
process (no Redis, or the Redis outage fallback). See docs/limits.md.
"""

from gateway.limits.base import (
    BudgetRule,
    BudgetStatus,
    Limiter,
    LimiterHooks,
    LimitPolicy,
    Reservation,
)
from gateway.limits.local import LocalLimiter
from gateway.limits.estimate import estimate_prompt_tokens
from gateway.limits.pricing import cost_micros
from gateway.limits.redis import RedisLimiter

__all__ = [
    "BudgetRule",
    "BudgetStatus",
    "Limiter",
    "LimiterHooks",
    "LimitPolicy",
    "LocalLimiter",
    "RedisLimiter",
    "Reservation",
    "cost_micros",
    "estimate_prompt_tokens",
]
