"""OpenAI's x-ratelimit-* and Retry-After headers, built from limit readings.

Both limiters report per-limit readings; this module picks the tightest limit per kind
(requests, tokens) so a client sees the limit that will stop it first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
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
    if ms < 1000:
        return f"{max(0, math.ceil(ms))}ms"
    seconds = math.ceil(ms) / 1000.0
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


def retry_headers(wait_ms: float, readings: Iterable[Reading]) -> dict[str, str]:
    """Retry-After (whole seconds, at least 1, rounded up) and retry-after-ms, plus x-ratelimit-*."""
    wait_ms = max(1.0, math.ceil(wait_ms))
    headers = ratelimit_headers(readings)
    headers["Retry-After"] = str(max(1, math.ceil(wait_ms / 1000.0)))
    headers["retry-after-ms"] = str(int(wait_ms))
    return headers
