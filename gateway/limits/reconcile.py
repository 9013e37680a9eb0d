"""Spend the local fallback settled while Redis was unreachable, kept until Redis can count it.

RedisLimiter sends it with reconcile.lua, one org and one batch per script; a batch keeps its id
until Redis confirmed it, so a batch re-sent after a lost reply is not counted twice.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from gateway.limits.base import BudgetSlot

log = logging.getLogger(__name__)

MAX_BUCKETS = 100_000  # ~10 MB; beyond it the oldest batch is dropped (the lake still has it)
BATCH_BUCKETS = 500  # buckets per script call: keeps one call well under a millisecond of Redis time
BUCKET_MS = 1000


class Batch(NamedTuple):
    """Settles of one org's reservations with the same budgets, bucketed by settle time."""

    id: str
    org_id: str
    slots: tuple[BudgetSlot, ...]
    buckets: tuple[tuple[int, int, int], ...]  # (first, last settle time in epoch ms, micro-USD)

    @property
    def micros(self) -> int:
        return sum(b[2] for b in self.buckets)


class SpendJournal:
    """Local settles to add to Redis: open buckets (still filling) and sealed batches (ids fixed).

    Args:
        new_id: a fresh batch id (unique across replicas).
    """

    def __init__(self, new_id: Callable[[], str], *, max_buckets: int = MAX_BUCKETS) -> None:
        self._new_id = new_id
        self._max_buckets = max_buckets
        self._open: dict[tuple[str, tuple[BudgetSlot, ...]], dict[int, list[int]]] = {}
        self.batches: deque[Batch] = deque()
        self._size = 0  # buckets, open and sealed

    def __len__(self) -> int:
        """Buckets waiting for Redis."""
        return self._size

    @property
    def micros(self) -> int:
        """Spend waiting for Redis."""
        return sum(b.micros for b in self.batches) + sum(
            bucket[2] for group in self._open.values() for bucket in group.values())

    def add(self, org_id: str, slots: tuple[BudgetSlot, ...], micros: int, end_ms: int) -> None:
        """Record one settle of `micros` at `end_ms` (epoch ms) against `slots` (one org's budgets)."""
        group = self._open.setdefault((org_id, slots), {})
        bucket = group.get(end_ms // BUCKET_MS)
        if bucket is not None:
            bucket[0] = min(bucket[0], end_ms)
            bucket[1] = max(bucket[1], end_ms)
            bucket[2] += micros
            return
        group[end_ms // BUCKET_MS] = [end_ms, end_ms, micros]
        self._size += 1
        if self._size > self._max_buckets:
            self.seal()
            dropped = self.batches.popleft()
            self._size -= len(dropped.buckets)
            log.warning("limits: dropped %d micro-USD of spend made during the Redis outage for org %s (journal "
                        "full); `opsctl budget rebuild` takes it from the lake", dropped.micros, dropped.org_id)

    def seal(self) -> None:
        """Turn open buckets into batches with fixed ids (bucket times never straddle a seal)."""
        for (org_id, slots), group in self._open.items():
            buckets = [(b[0], b[1], b[2]) for _, b in sorted(group.items())]
            for i in range(0, len(buckets), BATCH_BUCKETS):
                self.batches.append(Batch(self._new_id(), org_id, slots, tuple(buckets[i:i + BATCH_BUCKETS])))
        self._open.clear()

    def done(self) -> Batch:
        """The first batch was counted (or had been before): forget it."""
        batch = self.batches.popleft()
        self._size -= len(batch.buckets)
        return batch
