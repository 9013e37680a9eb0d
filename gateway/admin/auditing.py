"""Recording admin changes in the audit log: who (the caller), what, on which target, before and after.

Every admin mutation calls `record` once, after the change succeeded. Entries never hold secrets: fields
that carry one are dropped, and a value that still looks like one is redacted (and logged: that is a bug).
With Redis, each entry is also added to a stream for external consumers, best-effort.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import Counter
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway import appkeys
from gateway.errors import InvalidRequest
from gateway.store.models import AuditEntry, Record

log = logging.getLogger(__name__)

# Where a change came from, set by automation: `opsctl reconcile` sends "git:<repo>#<branch>@<commit>".
SOURCE_HEADER = "X-Fleetgate-Change-Source"
MAX_SOURCE = 256
_SOURCE = re.compile(rf"[\x20-\x7e]{{1,{MAX_SOURCE}}}", re.ASCII)
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")

# Fields that hold a secret or its digest are never recorded, at any depth.
SECRET_FIELDS = frozenset({"key", "secret", "client_secret", "token", "access_token", "password", "private_pem",
                           "private_key", "signing_key"})
_SECRET_SUFFIXES = ("_hash", "_secret", "_token", "_pem")
# What our secrets (API keys, personal and bootstrap tokens, client secrets), JWTs and PEM keys look like.
_SECRET_VALUE = re.compile(
    r"(?:sk-fg-|fgp_|fgs_|fg-admin-)[A-Za-z0-9_-]{20,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\."
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)
REDACTED = "[redacted]"
# Bookkeeping that changes by itself: not part of what the caller changed.
VOLATILE_FIELDS = frozenset({"updated_at", "last_health", "last_checked_at", "last_used_at"})
_MISSING = object()

# The Redis mirror of this app (absent without Redis or with audit_stream = "").
AUDIT_STREAM: web.AppKey[AuditStream] = web.AppKey("audit_stream")


def change_source(request: web.Request) -> str | None:
    """The request's `X-Fleetgate-Change-Source` (credentials in a URL masked), or None.

    Raises:
        InvalidRequest: not 1-256 printable ASCII characters, or it holds a secret.
    """
    raw = request.headers.get(SOURCE_HEADER)
    if raw is None:
        return None
    if not _SOURCE.fullmatch(raw) or not raw.strip():
        raise InvalidRequest(f"Header {SOURCE_HEADER} must be 1-{MAX_SOURCE} printable ASCII characters, "
                             "e.g. git:https://host/repo#main@<commit>.", param=SOURCE_HEADER)
    if _SECRET_VALUE.search(raw):
        raise InvalidRequest(f"Header {SOURCE_HEADER} must not hold a secret.", param=SOURCE_HEADER)
    return _URL_CREDENTIALS.sub("***@", raw)


def snapshot(value: Record | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The audited state of an object: its fields (as its API shows them) minus self-changing bookkeeping."""
    if value is None:
        return None
    fields = value.to_dict() if isinstance(value, Record) else dict(value)
    return {name: v for name, v in fields.items() if name not in VOLATILE_FIELDS}


def changes(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a change did at a glance: every field of a new object, the fields an update changed
    (a field it removed as None), nothing for a removal (`before` tells what was removed)."""
    if after is None:
        return {}
    if before is None:
        return dict(after)
    changed = {name: value for name, value in after.items() if before.get(name, _MISSING) != value}
    return changed | {name: None for name in before if name not in after}


def _is_secret_field(name: str) -> bool:
    lowered = name.lower()
    return lowered in SECRET_FIELDS or lowered.endswith(_SECRET_SUFFIXES)


def scrub(value: Any, action: str, where: str = "") -> Any:
    """`value` without secret fields (at any depth); a string that looks like a secret becomes REDACTED.

    Callers never pass secrets on purpose, so a redaction is logged as the bug it is (path, never the value)."""
    if isinstance(value, Mapping):
        return {k: scrub(v, action, f"{where}.{k}") for k, v in value.items() if not _is_secret_field(str(k))}
    if isinstance(value, list | tuple):
        return [scrub(v, action, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str) and _SECRET_VALUE.search(value):
        log.error("audit entry %s: the value at %s looked like a secret and was redacted", action, where or "/")
        return REDACTED
    return value


def audited_state(value: Record | Mapping[str, Any] | None, action: str, side: str) -> dict[str, Any] | None:
    state = snapshot(value)
    return None if state is None else scrub(state, action, side)


async def record(request: web.Request, action: str, target: str, *, org_id: str | None = None,
                 before: Record | Mapping[str, Any] | None = None,
                 after: Record | Mapping[str, Any] | None = None) -> AuditEntry | None:
    """Record one admin mutation made by the request's caller, once it succeeded; return the entry.

    An update that changed nothing (a second revoke, the same limits again) is not a change: no entry, None.

    Args:
        action: `<object>.<verb>`, e.g. "key.create".
        target: the changed object's id (its name where it has no id).
        org_id: the org the object belongs to (org principals see their org's entries); None if fleet-wide.
        before: the object before the change (None: created); a record or its dict.
        after: the object after it (None: removed).
    """
    who = request[appkeys.PRINCIPAL]  # set by the access middleware before any admin handler
    before_state = audited_state(before, action, "before")
    after_state = audited_state(after, action, "after")
    if before_state is not None and before_state == after_state:
        return None
    entry = await request.app[appkeys.STORE].add_audit(
        who.actor, action, target, changes(before_state, after_state), actor_type=who.kind, actor_id=who.id,
        org_id=org_id, request_id=request.get(appkeys.REQUEST_ID), source_ip=request.remote,
        source=change_source(request), before=before_state, after=after_state)
    stream = request.app.get(AUDIT_STREAM)
    if stream is not None:
        await stream.publish(entry)
    return entry


def flat(entry: AuditEntry) -> dict[str, str]:
    """One entry as text fields (CSV columns, Redis stream fields): objects as JSON text, None as ""."""
    out: dict[str, str] = {}
    for name, value in entry.to_dict().items():
        if value is None:
            out[name] = ""
        elif isinstance(value, dict | list):
            out[name] = orjson.dumps(value).decode()
        else:
            out[name] = str(value)
    return out


class AuditStream:
    """Mirrors audit entries to a Redis stream (XADD, trimmed to about `maxlen`) for external consumers.

    Best-effort: the store is the record, so a Redis failure never fails the change being audited. Failures
    are counted (`fleetgate_audit_stream_failures_total{error}`) and logged once per outage.
    """

    def __init__(self, redis: Any, key: str, *, maxlen: int, failures: Counter) -> None:
        self.key = key
        self._redis = redis
        self._maxlen = maxlen
        self._failures = failures
        self._failing = False

    async def publish(self, entry: AuditEntry) -> None:
        try:
            await self._redis.xadd(self.key, flat(entry), maxlen=self._maxlen, approximate=True)
        except (RedisError, OSError) as e:
            kind = ("timeout" if isinstance(e, RedisTimeoutError | TimeoutError)
                    else "connection" if isinstance(e, RedisConnectionError | ConnectionError) else "other")
            self._failures.labels(kind).inc()
            if not self._failing:
                self._failing = True
                log.warning("audit entries are not reaching the Redis stream %s (%s); the store still has them",
                            self.key, type(e).__name__)
            return
        if self._failing:
            self._failing = False
            log.info("audit entries reach the Redis stream %s again", self.key)


async def _stream_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the Redis mirror once Redis is (the app's resources context runs first)."""
    settings = app[appkeys.SETTINGS]
    redis = app[appkeys.REDIS]
    key = settings.audit_stream_key
    if key is not None and redis is not None:
        failures = Counter("fleetgate_audit_stream_failures", "Audit entries the Redis stream did not get.",
                           ["error"], registry=app[appkeys.METRICS].registry)
        stream = AuditStream(redis, key, maxlen=settings.audit_stream_maxlen, failures=failures)
        app[AUDIT_STREAM] = stream
        app[appkeys.DATAPLANE].audit_stream = stream  # its budget soft-limit entries go to the stream too
    yield


def install(app: web.Application) -> None:
    """Mirror entries to Redis when configured (the access middleware checks the change-source header)."""
    app.cleanup_ctx.append(_stream_ctx)
