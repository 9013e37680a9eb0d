"""OpenAI's x-ratelimit-* and Retry-After headers, built from limit readings.

Both limiters report per-limit readings; this module picks the tightest limit per kind
(requests, tokens) so a client sees the limit that will stop it first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from math import ceil
from typing import NamedTuple

KINDS = {"rpm": "requests", "tpm": "tokens"}


class Reading(NamedTuple):
    """One rate limit as seen by one request."""

    kind: str  # "rpm" | "tpm"
    scope: str  # "key" | "org"
    limit: int
    remaining: int
    reset_ms: float


def duration(ms: float) -> str:
    """A Go-style duration as OpenAI sends it: "20ms", "1s", "6m0s", "1.5s"."""
    if ms < 1000:  # the common case, and on every request: keep it to one format
        return f"{ceil(ms)}ms" if ms > 0 else "0ms"
    seconds = ceil(ms) / 1000.0
    minutes, seconds = divmod(seconds, 60.0)
    text = f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def ratelimit_headers(readings: Iterable[Reading]) -> dict[str, str]:
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens} for the tightest limit of each kind."""
    tightest: dict[str, Reading] = {}
    for reading in readings:
        current = tightest.get(reading.kind)
        if current is None or (reading.remaining, -reading.reset_ms) < (current.remaining, -current.reset_ms):
            tightest[reading.kind] = reading
    headers: dict[str, str] = {}
    for kind, reading in tightest.items():
        name = KINDS[kind]
        headers[f"x-ratelimit-limit-{name}"] = str(reading.limit)
        headers[f"x-ratelimit-remaining-{name}"] = str(reading.remaining)
        headers[f"x-ratelimit-reset-{name}"] = duration(reading.reset_ms)
    return headers


# Per kind (in order of first appearance): the three header names and the rate slots of that
# kind as (index, limit as text).
HeaderGroups = tuple[tuple[str, str, str, tuple[tuple[int, str], ...]], ...]


def header_groups(rates: list[tuple[str, int]]) -> HeaderGroups:
    """Precomputed header names and limits for rate slots given as (kind, limit), for `tightest_headers`."""
    members: dict[str, list[tuple[int, str]]] = {}
    for index, (kind, limit) in enumerate(rates):
        members.setdefault(kind, []).append((index, str(limit)))
    return tuple(
        (f"x-ratelimit-limit-{KINDS[kind]}", f"x-ratelimit-remaining-{KINDS[kind]}",
         f"x-ratelimit-reset-{KINDS[kind]}", tuple(slots))
        for kind, slots in members.items()
    )


def tightest_headers(groups: HeaderGroups, flat: list[float]) -> dict[str, str]:
    """`ratelimit_headers` for the slots of `groups`, read from flat (remaining, reset_ms) per slot.

    Same choice as ratelimit_headers (fewest remaining, then latest reset, first on a tie),
    without building a Reading per slot: this runs on every request.
    """
    headers: dict[str, str] = {}
    for limit_name, remaining_name, reset_name, slots in groups:
        index, limit_text = slots[0]
        left, reset = flat[2 * index], flat[2 * index + 1]
        for other, other_text in slots[1:]:
            other_left, other_reset = flat[2 * other], flat[2 * other + 1]
            if other_left < left or (other_left == left and other_reset > reset):
                left, reset, limit_text = other_left, other_reset, other_text
        headers[limit_name] = limit_text
        headers[remaining_name] = str(left)
        headers[reset_name] = duration(reset)
    return headers


def retry_headers(wait_ms: float, readings: Iterable[Reading]) -> dict[str, str]:
    """Retry-After (whole seconds, at least 1, rounded up) and retry-after-ms, plus x-ratelimit-*."""
    wait_ms = max(1.0, math.ceil(wait_ms))
    headers = ratelimit_headers(readings)
    headers["Retry-After"] = str(max(1, math.ceil(wait_ms / 1000.0)))
    headers["retry-after-ms"] = str(int(wait_ms))
    return headers
