"""Signed inference requests: HMAC-SHA256 over the request, for clients that must not send a bearer secret.

Client and gateway derive the same signing key from the API key's secret; the store keeps only that
derived key (usable for signing, never for bearer use) and the secret's SHA-256. See docs/signed-requests.md.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import RedisError

from gateway.errors import AuthenticationFailed
from gateway.redis.keyspace import RedisKeys

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Fleetgate-Signature"
DOCS = "docs/signed-requests.md"
VERSION = "v1"
WINDOW_S = 300  # a signature's timestamp may be this far from the gateway's clock, either way
DERIVATION_LABEL = b"fleetgate-request-signing-v1"
LOCAL_NONCES_MAX = 200_000

_FIELDS = ("keyId", "ts", "nonce", "sig")
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
_TS = re.compile(r"0|[1-9][0-9]{0,11}", re.ASCII)  # as str(int) writes it: that text is signed
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}", re.ASCII)
_SIG = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)


@dataclass(frozen=True, slots=True)
class Signature:
    """The parsed signature header."""

    key_id: str
    ts: int  # unix seconds
    nonce: str
    sig: str  # lowercase hex HMAC-SHA256 of `string_to_sign`


def derive_signing_key(secret: str) -> str:
    """The key both sides sign with, hex: HMAC-SHA256(key=secret, msg=DERIVATION_LABEL)."""
    return hmac.new(secret.encode(), DERIVATION_LABEL, hashlib.sha256).hexdigest()


def string_to_sign(method: str, target: str, ts: int, nonce: str, body: bytes) -> bytes:
    """What is signed: version, method, path with query as sent, timestamp, nonce, SHA-256 of the raw body."""
    return "\n".join((VERSION, method.upper(), target, str(ts), nonce, hashlib.sha256(body).hexdigest())).encode(
        "utf-8", "surrogatepass")


def sign(signing_key: str, method: str, target: str, ts: int, nonce: str, body: bytes) -> str:
    return hmac.new(bytes.fromhex(signing_key), string_to_sign(method, target, ts, nonce, body),
                    hashlib.sha256).hexdigest()


def signature_header(key_id: str, signing_key: str, method: str, target: str, body: bytes, *,
                     ts: int | None = None, nonce: str | None = None) -> str:
    """The header value a client sends (a fresh timestamp and nonce unless given)."""
    ts = int(time.time()) if ts is None else ts
    nonce = secrets.token_urlsafe(16) if nonce is None else nonce
    return f"keyId={key_id},ts={ts},nonce={nonce},sig={sign(signing_key, method, target, ts, nonce, body)}"


def _malformed() -> AuthenticationFailed:
    # The header's values are never echoed: a signature or a mistyped secret must not reach a log.
    return AuthenticationFailed(
        f"Malformed {SIGNATURE_HEADER} header: expected 'keyId=<key id>,ts=<unix seconds>,nonce=<16-64 of "
        f"A-Z a-z 0-9 _ ->,sig=<64 hex>' (see {DOCS}).", code="invalid_signature_header")


def parse_header(header: str) -> Signature:
    """Parse `keyId=…,ts=…,nonce=…,sig=…` (each field exactly once, in any order).

    Raises:
        AuthenticationFailed: 401 naming the expected shape, never the values received.
    """
    if len(header) > 512:
        raise _malformed()
    values: dict[str, str] = {}
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or name not in _FIELDS or name in values:
            raise _malformed()
        values[name] = value.strip()
    if (len(values) != len(_FIELDS) or not _KEY_ID.fullmatch(values["keyId"]) or not _TS.fullmatch(values["ts"])
            or not _NONCE.fullmatch(values["nonce"]) or not _SIG.fullmatch(values["sig"])):
        raise _malformed()
    return Signature(key_id=values["keyId"], ts=int(values["ts"]), nonce=values["nonce"], sig=values["sig"].lower())


def check_window(ts: int, now: float) -> None:
    """Refuse a timestamp more than WINDOW_S from the gateway's clock, naming both."""
    if abs(now - ts) > WINDOW_S:
        raise AuthenticationFailed(
            f"The signature's timestamp is outside the allowed window: the gateway's time is {int(now)} "
            f"(unix seconds) and a request must be signed within ±{WINDOW_S} s of it. Check the client's clock.",
            code="signature_expired")


def verify(signing_key: str, signature: Signature, method: str, target: str, body: bytes) -> bool:
    """True when `signature` is this key's HMAC of exactly this request (constant-time compare)."""
    expected = sign(signing_key, method, target, signature.ts, signature.nonce, body)
    return hmac.compare_digest(expected, signature.sig)


class Nonces(Protocol):
    """Remembers (key id, nonce) pairs for as long as their signatures are inside the window."""

    async def claim(self, key_id: str, nonce: str, ts: int, now: float) -> bool:
        """True the first time a pair is seen; False for a replay (or a request too old to be checked)."""
        ...


class LocalNonces:
    """One process's memory of nonces, bounded by `max_entries`.

    A pair is kept until its timestamp leaves the window (then `check_window` refuses it anyway).
    When full, the pairs with the oldest timestamps are dropped and every request signed at or before
    that timestamp is refused from then on: a replay is never accepted, the window only narrows.
    """

    def __init__(self, max_entries: int = LOCAL_NONCES_MAX) -> None:
        self._max = max_entries
        self._seen: dict[str, int] = {}  # "key_id nonce" → its request's timestamp
        self._by_ts: dict[int, list[str]] = {}
        self._expired_through = -1
        self._floor = -1  # requests signed at or before this second can no longer be checked

    def __len__(self) -> int:
        return len(self._seen)

    async def claim(self, key_id: str, nonce: str, ts: int, now: float) -> bool:
        return self.claim_now(key_id, nonce, ts, now)

    def claim_now(self, key_id: str, nonce: str, ts: int, now: float) -> bool:
        self._expire(int(now) - WINDOW_S - 1)
        pair = f"{key_id} {nonce}"
        if ts <= self._floor or pair in self._seen:
            return False
        self._seen[pair] = ts
        self._by_ts.setdefault(ts, []).append(pair)
        while len(self._seen) > self._max:
            oldest = min(self._by_ts)
            self._drop(oldest)
            self._floor = max(self._floor, oldest)
        return True

    def _expire(self, through: int) -> None:
        if through <= self._expired_through:
            return
        self._expired_through = through
        for ts in [t for t in self._by_ts if t <= through]:
            self._drop(ts)

    def _drop(self, ts: int) -> None:
        for pair in self._by_ts.pop(ts):
            del self._seen[pair]


class RedisNonces:
    """Nonces in Redis (`SET NX EX`), shared by every replica and worker.

    `command` runs one Redis command: FastRedis.execute (the hot path's lean client) or redis-py's
    `execute_command`. If Redis fails, the claim falls back to this process's LocalNonces, like the
    limits' per-replica enforcement: requests keep being served and a replay to the same process is
    still refused.
    """

    def __init__(self, command: Callable[..., Awaitable[Any]], keys: RedisKeys, *,
                 fallback: LocalNonces | None = None) -> None:
        self._command = command
        self._keys = keys
        self._fallback = fallback or LocalNonces()
        self.failures = 0

    def key(self, key_id: str, nonce: str) -> str:
        return self._keys.request_nonce(key_id, nonce)

    async def claim(self, key_id: str, nonce: str, ts: int, now: float) -> bool:
        ttl = max(1, math.ceil(ts + WINDOW_S - now) + 1)
        try:
            # OK (b"OK" or True, by client) when the key was set; None when it already existed.
            return bool(await self._command("SET", self.key(key_id, nonce), b"1", "NX", "EX", ttl))
        except (RedisError, OSError, TimeoutError) as e:
            self.failures += 1
            if self.failures == 1 or self.failures % 1000 == 0:
                log.warning("nonce store unavailable (%s): replays are checked per process (%d failures)",
                            type(e).__name__, self.failures)
            return self._fallback.claim_now(key_id, nonce, ts, now)
