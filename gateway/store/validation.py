"""Input checks for store writes: refuse bad values with an InvalidRequest naming the field.

The schema keeps types loose so one DDL serves both dialects; these checks hold the line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from gateway.errors import InvalidRequest

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
# Money is integer micro-USD, and the Redis limiter's Lua scripts hold it in doubles: exact below 2**53.
MAX_MICROS = 2**53 - 1
# USD per 1M tokens (= micro-USD per token): even INT32_MAX tokens at this price stay below MAX_MICROS.
MAX_PRICE = 100_000.0
MAX_NAME_LENGTH = 200


def _bad(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{field} {message}", param=field)


def choice(field: str, value: object, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise _bad(field, f"must be one of {', '.join(allowed)}, got {value!r}")
    return value


def name(field: str, value: object, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise _bad(field, f"must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise _bad(field, "must not be empty")
    if len(value) > MAX_NAME_LENGTH or value != value.strip():
        raise _bad(field, f"must be at most {MAX_NAME_LENGTH} characters without surrounding spaces, got {value[:64]!r}")
    if "\x00" in value:  # PostgreSQL text cannot hold NUL; SQLite would, and the two must agree
        raise _bad(field, "must not contain NUL characters")
    return value


MAX_TEXT_LENGTH = 4000
_FREE_TEXT_CONTROLS = frozenset(chr(c) for c in (*range(0x20), 0x7F)) - {"\n", "\t"}


def text(field: str, value: object, *, max_length: int = MAX_TEXT_LENGTH) -> str:
    """Free text (messages, reasons, descriptions): may be empty or span lines; no other controls."""
    if not isinstance(value, str):
        raise _bad(field, f"must be a string, got {type(value).__name__}")
    if len(value) > max_length:
        raise _bad(field, f"must be at most {max_length} characters")
    if any(ch in _FREE_TEXT_CONTROLS for ch in value):
        raise _bad(field, "must not contain control characters other than newline and tab")
    return value


def integer(field: str, value: object, *, minimum: int = 0, maximum: int = INT32_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(field, f"must be an integer, got {value!r}")
    if not minimum <= value <= maximum:
        raise _bad(field, f"must be between {minimum} and {maximum}, got {value}")
    return value


def optional_integer(field: str, value: object, *, minimum: int = 0, maximum: int = INT32_MAX) -> int | None:
    return None if value is None else integer(field, value, minimum=minimum, maximum=maximum)


def price(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(field, f"must be a number, got {value!r}")
    if not math.isfinite(value) or not 0 <= value <= MAX_PRICE:
        raise _bad(field, f"must be a non-negative number of at most {MAX_PRICE:g} (USD per 1M tokens), got {value}")
    return float(value)


def percent(field: str, value: object) -> float:
    """A share in percent: a finite number in 0..100."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(field, f"must be a number, got {value!r}")
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise _bad(field, f"must be a number between 0 and 100, got {value}")
    return float(value)


def strings(field: str, values: object) -> tuple[str, ...]:
    # A bare string is a sequence too; "gpt" would silently become ("g", "p", "t").
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise _bad(field, f"must be a list of strings, got {values!r}")
    return tuple(name(field, v) for v in values)


def json_object(field: str, value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _bad(field, f"must be an object, got {type(value).__name__}")
    try:
        orjson.dumps(value)
    except TypeError as e:
        raise _bad(field, f"must be JSON-serialisable: {e}") from e
    return dict(value)


def aware_time(field: str, value: object) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise _bad(field, f"must be a timezone-aware datetime, got {value!r}")
    return value


def url(field: str, value: object) -> str:
    text = name(field, value)
    if not text.startswith(("http://", "https://")):
        raise _bad(field, f"must be an http:// or https:// URL, got {text!r}")
    return text.rstrip("/")
