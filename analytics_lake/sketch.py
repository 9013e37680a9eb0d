"""Mergeable latency sketches: a fixed log-scale histogram (the DDSketch bucketing, relative accuracy ALPHA).

A value x > 0 falls in bucket b = ceil(ln(x) / ln(GAMMA)), i.e. GAMMA**(b-1) < x <= GAMMA**b, and the bucket's
representative value 2·GAMMA**b / (GAMMA + 1) is within ALPHA (relative) of every value in it. A sketch is a
map bucket → count, so merging sketches (hours into days, keys into orgs) is adding counts: exact, associative,
and the same whether done in Python or in DuckDB. Quantiles read off the merged counts are within ALPHA of the
exact value at the same rank.

The lake stores a sketch as a list of {b: SMALLINT, n: BIGINT} sorted by b; `bucket_sql` and `value_sql` are
the SQL forms of `bucket_of` and `value_of`, used by the rollup builder and by the queries that merge sketches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

ALPHA = 0.005  # relative accuracy: quantiles within 0.5 % of exact, well inside the 1 % the reports promise
GAMMA = (1 + ALPHA) / (1 - ALPHA)
LN_GAMMA = math.log(GAMMA)
MIN_MS = 0.001  # values are clamped to [MIN_MS, MAX_MS]: 1 µs … ~28 h, buckets fit a SMALLINT
MAX_MS = 100_000_000.0


def bucket_of(x: float) -> int:
    """The bucket of a value in milliseconds (clamped to [MIN_MS, MAX_MS])."""
    return math.ceil(math.log(min(max(x, MIN_MS), MAX_MS)) / LN_GAMMA)


def value_of(bucket: int) -> float:
    """The bucket's representative value: within ALPHA of anything in the bucket."""
    return 2 * GAMMA**bucket / (GAMMA + 1)


def bucket_sql(column: str) -> str:
    """SQL for `bucket_of(column)`; NULL stays NULL (DuckDB's greatest/least would skip it)."""
    return (f"CASE WHEN {column} IS NOT NULL THEN CAST(ceil(ln(least(greatest({column}, {MIN_MS!r}), {MAX_MS!r}))"
            f" / {LN_GAMMA!r}) AS SMALLINT) END")


def value_sql(bucket: str) -> str:
    """SQL for `value_of(bucket)`."""
    return f"(2 * pow({GAMMA!r}, {bucket}) / {GAMMA + 1!r})"


def rank_of(q: float, total: int) -> int:
    """The 0-based rank whose value estimates the q-quantile: floor(q·(n−1)), as DuckDB's quantile_cont starts from."""
    return math.floor(q * (total - 1))


def quantile(counts: Mapping[int, int], q: float) -> float | None:
    """The q-quantile (0 < q < 1) of a sketch given as bucket → count; None for an empty sketch."""
    if not 0 < q < 1:
        raise ValueError(f"quantile {q!r} is invalid: expected 0 < q < 1")
    total = sum(counts.values())
    if total == 0:
        return None
    rank, seen = rank_of(q, total), 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen > rank:
            return value_of(bucket)
    raise AssertionError("unreachable: the ranks are within the total")


def merge(*sketches: Mapping[int, int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for sketch in sketches:
        for bucket, n in sketch.items():
            out[bucket] = out.get(bucket, 0) + n
    return out


def count_above(counts: Mapping[int, int], threshold_ms: float) -> int:
    """How many values are above `threshold_ms`, to bucket accuracy (a bucket counts when its value is)."""
    return sum(n for b, n in counts.items() if value_of(b) > threshold_ms)
