"""GCRA (generic cell rate algorithm) arithmetic, the reference for the Lua scripts.

A limit of N per 60 s is a bucket of N units refilled continuously at N/60 s: a burst of N
passes at once, then one unit every 60/N s. State per limit is (backlog, seen): the ms of
work queued at time `seen` (0 = full bucket). Keeping the backlog small (<= 60,000 ms), not
an absolute arrival time, keeps float rounding negligible even over millions of requests.
"""

from __future__ import annotations

import math

WINDOW_MS = 60_000.0
EPOCH_BASE_MS = 1_700_000_000_000
# Slack for float rounding: a request that would fit within this many ms is admitted.
EPSILON_MS = 0.001


def to_ms(now_s: float) -> float:
    """Epoch seconds to the limiter's time scale (ms since EPOCH_BASE_MS)."""
    return now_s * 1000.0 - EPOCH_BASE_MS


def backlog(state: tuple[float, float] | None, now: float) -> tuple[float, float]:
    """(backlog at the effective now, effective now) from a stored (backlog, seen).

    A caller timestamp older than `seen` (it reached the store late) counts as `seen`, so
    requests are judged in the order they arrive.
    """
    if state is None:
        return 0.0, now
    level, seen = state
    effective = now if now > seen else seen
    return max(0.0, level - (effective - seen)), effective


def admit(level: float, amount: int, limit: int) -> tuple[bool, float, float]:
    """Try to take `amount` units from a bucket of `limit` per WINDOW_MS with `level` ms of backlog.

    Returns:
        (allowed, new backlog if allowed, wait_ms if refused: inf when amount > limit, it never fits).
    """
    new_level = level + amount * (WINDOW_MS / limit)
    over = new_level - WINDOW_MS
    if over <= EPSILON_MS:
        return True, new_level, 0.0
    return False, level, (math.inf if amount > limit else over)


def remaining(level: float, limit: int) -> int:
    """Units that could be taken right now."""
    return max(0, min(limit, math.floor((WINDOW_MS - level + EPSILON_MS) * limit / WINDOW_MS)))


def correct(level: float, delta: int, limit: int) -> float:
    """The backlog after a correction of `delta` units (negative = give back); <= 0 is a full bucket."""
    return max(0.0, level) + delta * (WINDOW_MS / limit)
