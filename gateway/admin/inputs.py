"""Admin API input checks: every body field, query parameter and path segment, type-checked and bounded.

Hostile values become an OpenAI-shaped 400 naming the parameter before anything reaches the
store, Redis or the lake; the bounds are the store's own (`gateway.store.validation`), so they agree.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from datetime import timedelta
from typing import Any

import orjson
from aiohttp import web

from analytics_lake.errors import LakeInputError
from analytics_lake.report_args import MAX_DURATION, parse_duration
from gateway.errors import InvalidRequest
from gateway.store import validation as check

MAX_STRING = check.MAX_NAME_LENGTH
MAX_URL = 2048
MAX_LIST = 1000
MAX_METADATA_BYTES = 64 * 1024
MAX_METADATA_DEPTH = 16
MAX_QUERY_INT_DIGITS = 18
_SHOWN_NAME = 64

# C0/C1 controls: PostgreSQL refuses NUL in text, and newlines forge log and audit lines.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_INT = re.compile(rf"-?[0-9]{{1,{MAX_QUERY_INT_DIGITS}}}", re.ASCII)
_MISSING = object()


def shown(name: str) -> str:
    """A caller-chosen name, cut short enough to echo in an error."""
    return name if len(name) <= _SHOWN_NAME else name[:_SHOWN_NAME] + "…"


def only_fields(body: Mapping[str, Any], allowed: Collection[str]) -> None:
    """Refuse fields the route does not know: a typo must not be silently ignored (or audited)."""
    for name in body:
        if name not in allowed:
            raise InvalidRequest(f"Unknown field {shown(name)!r}: expected {', '.join(sorted(allowed))}.",
                                 param=shown(name))


def text(value: str, param: str, *, max_length: int = MAX_STRING) -> str:
    """A non-empty string of at most `max_length` characters without control characters."""
    if not value.strip():
        raise InvalidRequest(f"'{param}' must not be empty.", param=param)
    if len(value) > max_length:
        raise InvalidRequest(f"'{param}' must be at most {max_length} characters.", param=param)
    if _CONTROL.search(value):
        raise InvalidRequest(f"'{param}' must not contain control characters.", param=param)
    return value


def _type_name(kinds: tuple[type, ...]) -> str:
    return "/".join(k.__name__ for k in kinds)


def field(
    body: Mapping[str, Any],
    name: str,
    kind: type | tuple[type, ...],
    *,
    required: bool = False,
    default: Any = None,
    minimum: float | None = None,
    maximum: float | None = None,
    max_length: int = MAX_STRING,
    choices: Iterable[str] | None = None,
) -> Any:
    """Read and validate one field; raise InvalidRequest naming it.

    Numbers must be finite and within [minimum, maximum] (default bounds: the store's 32-bit
    integer column); strings non-empty, at most `max_length` characters, no control characters;
    objects (`dict`) are free-form JSON of bounded depth and size.
    """
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise InvalidRequest(f"'{name}' is required.", param=name)
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise InvalidRequest(f"'{name}' must be of type {_type_name(kinds)}.", param=name)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError as e:
            raise InvalidRequest(f"'{name}' must be a finite number.", param=name) from e
    if not isinstance(value, kinds):
        raise InvalidRequest(f"'{name}' must be of type {_type_name(kinds)}.", param=name)
    if isinstance(value, str):
        text(value, name, max_length=max_length)
    elif isinstance(value, dict):
        json_object(value, name)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number(value, name, minimum=minimum, maximum=maximum)
    if choices is not None and value not in tuple(choices):
        raise InvalidRequest(f"'{name}' must be one of: {', '.join(choices)}.", param=name)
    return value


def number(value: float, param: str, *, minimum: float | None = None, maximum: float | None = None) -> float:
    low = -check.INT32_MAX - 1 if minimum is None else minimum
    high = check.INT32_MAX if maximum is None else maximum
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f"'{param}' must be a finite number.", param=param)
    if value < low:
        raise InvalidRequest(f"'{param}' must be >= {low:g}.", param=param)
    if value > high:
        raise InvalidRequest(f"'{param}' must be <= {high:g}.", param=param)
    return value


def string_list(body: Mapping[str, Any], name: str, *, max_items: int = MAX_LIST) -> tuple[str, ...]:
    value = body.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidRequest(f"'{name}' must be a list of non-empty strings.", param=name)
    if len(value) > max_items:
        raise InvalidRequest(f"'{name}' must have at most {max_items} items.", param=name)
    for item in value:
        text(item, name)
    return tuple(value)


def json_object(value: dict[str, Any], param: str) -> dict[str, Any]:
    """Free-form JSON (e.g. model metadata): string keys without controls, bounded depth and size."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise InvalidRequest(f"'{param}' must be nested at most {MAX_METADATA_DEPTH} levels deep.", param=param)
        if isinstance(node, dict):
            for key, child in node.items():
                if _CONTROL.search(key) or len(key) > MAX_STRING:
                    raise InvalidRequest(f"'{param}' keys must be at most {MAX_STRING} characters without "
                                         "control characters.", param=param)
                stack.append((child, depth + 1))
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
        elif isinstance(node, str) and "\x00" in node:
            raise InvalidRequest(f"'{param}' must not contain NUL characters.", param=param)
        elif isinstance(node, float) and not math.isfinite(node):
            raise InvalidRequest(f"'{param}' must hold finite numbers only.", param=param)
    try:
        size = len(orjson.dumps(value))
    except TypeError as e:  # orjson refuses integers beyond 64 bits
        raise InvalidRequest(f"'{param}' must be JSON with 64-bit integers: {e}", param=param) from e
    if size > MAX_METADATA_BYTES:
        raise InvalidRequest(f"'{param}' must be at most {MAX_METADATA_BYTES} bytes of JSON.", param=param)
    return value


def duration(value: str, param: str, *, maximum: timedelta = MAX_DURATION) -> timedelta:
    """'30d', '12h', '90m' (s, m, h, d, w), positive and at most `maximum`."""
    try:
        return parse_duration(text(value, param), argument=param, maximum=maximum)
    except LakeInputError as e:
        raise InvalidRequest(f"'{param}' must be a duration like 30d, 12h or 90m (s, m, h, d, w), "
                             f"at most {maximum.days}d.", param=param) from e


def query_str(request: web.Request, name: str, default: str | None = None, *,
              max_length: int = MAX_STRING) -> str | None:
    """A query parameter (empty = absent), bounded like a body string."""
    raw = request.query.get(name)
    if not raw:
        return default
    return text(raw, name, max_length=max_length)


def query_int(request: web.Request, name: str, default: int, *, minimum: int = 1, maximum: int = 10_000) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    # int() would also take '٣', '1_0', ' 7 ' and (slowly) 4,000-digit strings.
    if not _INT.fullmatch(raw) or not minimum <= int(raw) <= maximum:
        raise InvalidRequest(f"query parameter '{name}' must be an integer between {minimum} and {maximum}.",
                             param=name)
    return int(raw)


def path(request: web.Request, name: str) -> str:
    """A path segment ({org}, {key_id}, ...): ids and names, bounded like a body string."""
    return text(request.match_info[name], name)
