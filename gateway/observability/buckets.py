"""Histogram buckets as the admin API hands them out: bounds in ms, and counts per bucket rather than cumulative.

Prometheus buckets count everything up to their bound (`le`); clients that diff two snapshots (the rollout
analyzer, the fleet overview) want each bucket's own count. Shared by `/admin/v1/analysis` and `/admin/v1/fleet`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def bounds_ms(buckets: Sequence[float]) -> list[float | None]:
    """The buckets' upper bounds in ms, rounded to µs, then None for +Inf."""
    return [round(bound * 1000.0, 3) for bound in buckets] + [None]


def bucket_index(buckets: Sequence[float]) -> dict[float, int]:
    """`le` label value (as a float) → position in `bounds_ms(buckets)`; other bounds are not ours."""
    return {float(bound): i for i, bound in enumerate(buckets)} | {math.inf: len(buckets)}


def per_bucket(cumulative: Sequence[float]) -> list[int]:
    """Cumulative bucket values (in `bucket_index` order) → each bucket's own count."""
    return [int(c - (cumulative[i - 1] if i else 0)) for i, c in enumerate(cumulative)]
