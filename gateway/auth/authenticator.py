"""API-key authentication with an in-process cache (and a Redis cache shared by replicas).

Keys are looked up by the SHA-256 of the presented secret, so the secret never reaches
the store, Redis or a log; signed requests (gateway/auth/signing.py) look their key up by id.
Revocations, new keys and budget changes arrive on the change bus and drop the cached
entries (known and unknown) at once in every process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.auth.secrets import hash_api_key, tokens_equal
from gateway.auth.signing import (
    DOCS,
    SIGNATURE_HEADER,
    LocalNonces,
    Nonces,
    RedisNonces,
    Signature,
    check_window,
    verify,
)
from gateway.errors import AuthenticationFailed, NotFound
from gateway.redis.bus import RESYNC
from gateway.redis.keyspace import RedisKeys
from gateway.store.base import Store
from gateway.store.models import ApiKey, Budget, Organization

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What the data plane needs to know about the caller."""

    key: ApiKey
    org: Organization
    budgets: tuple[Budget, ...]  # the org's budget and this key's, if any
    allowed_models: frozenset[str]  # empty = all
    expires_ts: float | None

    def may_use(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models

    def to_json(self) -> bytes:
        return orjson.dumps({"key": self.key.to_dict() | {"key_hash": self.key.key_hash},
                             "org": self.org.to_dict(), "budgets": [b.to_dict() for b in self.budgets]})

    @classmethod
    def build(cls, key: ApiKey, org: Organization, budgets: tuple[Budget, ...]) -> KeyInfo:
        return cls(key=key, org=org, budgets=budgets, allowed_models=frozenset(key.allowed_models),
                   expires_ts=key.expires_at.timestamp() if key.expires_at else None)

    @classmethod
    def from_json(cls, raw: bytes) -> KeyInfo:
        data = orjson.loads(raw)
        return cls.build(ApiKey.from_dict(data["key"]), Organization.from_dict(data["org"]),
                         tuple(Budget.from_dict(b) for b in data["budgets"]))


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationFailed("Missing API key: send 'Authorization: Bearer sk-…'.")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("Malformed Authorization header: expected 'Bearer <api key>'.")
    return token.strip()


def _check_usable(info: KeyInfo, now: float) -> None:
    if info.key.status != "active":
        raise AuthenticationFailed("This API key has been revoked.", code="revoked_api_key")
    if info.expires_ts is not None and info.expires_ts <= now:
        raise AuthenticationFailed("This API key has expired.", code="expired_api_key")


class Authenticator:
    """Looks API keys up by hash (process cache, then Redis, then the store, bounded) or, for signed
    requests, by id (process cache, then the store: the Redis cache never holds signing keys).

    Unknown hashes are remembered for `negative_ttl_s` (at most `negative_max` of them, oldest
    evicted first), concurrent lookups of one hash share a single store query, and at most
    `max_store_lookups` store lookups run at once, so a key-guessing flood cannot reach or
    saturate the store. `store_lookups` and `peak_store_lookups` count what did reach it.
    """

    def __init__(
        self,
        store: Store,
        *,
        redis: aioredis.Redis | None = None,
        keys: RedisKeys | None = None,
        ttl_s: float = 60.0,
        redis_ttl_s: int = 120,
        negative_ttl_s: float = 5.0,
        negative_max: int = 10_000,
        max_store_lookups: int = 4,
        clock: Callable[[], float] = time.time,
        nonces: Nonces | None = None,
    ) -> None:
        self._store = store
        self._redis = redis
        self._keys = keys or RedisKeys()
        self._ttl_s = ttl_s
        self._redis_ttl_s = redis_ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._negative_max = negative_max
        self._clock = clock
        # Signed requests' nonces: in Redis when there is one, so every replica refuses a replay.
        self._nonces = nonces or (RedisNonces(redis.execute_command, self._keys) if redis is not None
                                  else LocalNonces())
        # Entries are keyed by lookup: a key hash (bearer) or a key id (signed); the two never collide.
        self._cache: dict[str, tuple[KeyInfo, float]] = {}
        self._unknown: OrderedDict[str, float] = OrderedDict()  # lookup → when to ask the store again
        self._loading: dict[str, asyncio.Future[KeyInfo]] = {}
        self._store_slots = asyncio.Semaphore(max_store_lookups)
        # Bumped by every invalidation: a lookup that overlapped one must not cache what it read.
        self._generation = 0
        self.store_lookups = 0
        self.store_lookups_in_flight = 0
        self.peak_store_lookups = 0
        self.negative_hits = 0

    async def authenticate(self, authorization: str | None) -> KeyInfo:
        """Return the caller's KeyInfo, or raise AuthenticationFailed (401)."""
        key_hash = hash_api_key(_bearer(authorization))
        now = self._clock()
        info = await self._lookup(key_hash, now, by_id=False)
        if not tokens_equal(info.key.key_hash, key_hash):
            raise AuthenticationFailed("Incorrect API key provided.")
        _check_usable(info, now)
        if info.key.require_signature:
            raise AuthenticationFailed(f"This key requires signed requests: see {DOCS}.", code="signature_required")
        return info

    async def authenticate_signed(self, signature: Signature, method: str, target: str, body: bytes) -> KeyInfo:
        """Return the KeyInfo of a correctly signed, fresh, first-seen request, or raise AuthenticationFailed.

        The signature is checked before the key's status, so only its holder learns that it was revoked;
        the nonce is remembered only then, so a forged request cannot use up a real client's nonce.
        """
        now = self._clock()
        check_window(signature.ts, now)
        try:
            info = await self._lookup(signature.key_id, now, by_id=True)
        except AuthenticationFailed:
            raise AuthenticationFailed(f"Unknown key id in the {SIGNATURE_HEADER} header.") from None
        if info.key.signing_key is None:
            raise AuthenticationFailed("This key does not sign requests: send it as 'Authorization: Bearer …', or "
                                       f"create a key with require_signature (see {DOCS}).",
                                       code="signature_not_enabled")
        if not verify(info.key.signing_key, signature, method, target, body):
            raise AuthenticationFailed(
                "The request signature does not match: sign 'v1', the method, the path with its query as sent, "
                f"the timestamp, the nonce and the SHA-256 of the exact body with this key's signing key (see {DOCS}).",
                code="invalid_signature")
        _check_usable(info, now)
        if not await self._nonces.claim(signature.key_id, signature.nonce, signature.ts, now):
            raise AuthenticationFailed(
                "Replayed request: this nonce was already used with this key within the signature window (or the "
                "request is too old for the gateway to check). Sign every request with a fresh nonce.",
                code="replayed_request")
        return info

    async def _lookup(self, lookup: str, now: float, *, by_id: bool) -> KeyInfo:
        cached = self._cache.get(lookup)
        if cached is not None and cached[1] > now:
            return cached[0]
        return await self._load_once(lookup, now, by_id)

    async def _load_once(self, lookup: str, now: float, by_id: bool) -> KeyInfo:
        """One lookup per hash (or id) at a time; every concurrent caller shares its result."""
        retry_at = self._unknown.get(lookup)
        if retry_at is not None:
            if retry_at > now:
                self.negative_hits += 1
                raise AuthenticationFailed("Incorrect API key provided.")
            del self._unknown[lookup]
        loading = self._loading.get(lookup)
        if loading is None:
            loading = asyncio.ensure_future(self._load(lookup, by_id))
            self._loading[lookup] = loading
            loading.add_done_callback(lambda done: self._loaded(lookup, done))
        # Shielded: a caller that disconnects must not cancel the lookup the others wait for.
        return await asyncio.shield(loading)

    def _loaded(self, lookup: str, done: asyncio.Future[KeyInfo]) -> None:
        if self._loading.get(lookup) is done:
            del self._loading[lookup]
        if not done.cancelled():
            done.exception()  # retrieved: when every waiter left, asyncio must not log it as lost

    async def _load(self, lookup: str, by_id: bool) -> KeyInfo:
        generation = self._generation
        info = None if by_id else await self._read_redis(lookup)
        if info is None:
            info = await self._read_store(lookup, generation, by_id)
        if generation == self._generation:
            self._cache[lookup] = (info, self._clock() + self._ttl_s)
        return info

    async def _read_redis(self, key_hash: str) -> KeyInfo | None:
        if self._redis is None:
            return None
        try:
            raw = await self._redis.get(self._keys.api_key(key_hash))
        except (RedisError, OSError, TimeoutError) as e:
            log.debug("key cache unavailable (%s)", type(e).__name__)
            return None
        return KeyInfo.from_json(raw) if raw is not None else None

    async def _read_store(self, lookup: str, generation: int, by_id: bool) -> KeyInfo:
        async with self._store_slots:
            self.store_lookups += 1
            self.store_lookups_in_flight += 1
            self.peak_store_lookups = max(self.peak_store_lookups, self.store_lookups_in_flight)
            try:
                key = await (self._find_by_id(lookup) if by_id else self._store.find_api_key_by_hash(lookup))
                org = None
                if key is not None:
                    try:
                        org = await self._store.get_org(key.org_id)
                    except NotFound:
                        org = None
                budgets = () if org is None or key is None else tuple(
                    b for b in await self._store.list_budgets(org.id) if b.key_id in (None, key.id))
            finally:
                self.store_lookups_in_flight -= 1
        if key is None or org is None:
            self._remember_unknown(lookup, generation)
            raise AuthenticationFailed("Incorrect API key provided.")
        info = KeyInfo.build(key, org, budgets)
        if self._redis is not None and not by_id and generation == self._generation:
            try:
                await self._redis.set(self._keys.api_key(lookup), info.to_json(), ex=self._redis_ttl_s)
            except (RedisError, OSError, TimeoutError) as e:
                log.debug("key cache write failed (%s)", type(e).__name__)
        return info

    async def _find_by_id(self, key_id: str) -> ApiKey | None:
        try:
            return await self._store.get_api_key(key_id)
        except NotFound:
            return None

    def _remember_unknown(self, lookup: str, generation: int) -> None:
        # A key created (and announced) while we looked must not be refused for the TTL.
        if self._negative_ttl_s <= 0 or generation != self._generation:
            return
        self._unknown[lookup] = self._clock() + self._negative_ttl_s
        self._unknown.move_to_end(lookup)
        while len(self._unknown) > self._negative_max:
            self._unknown.popitem(last=False)

    @property
    def unknown_cached(self) -> int:
        """How many unknown key hashes (and key ids of signed requests) are remembered now."""
        return len(self._unknown)

    async def forget(self, *, key_hashes: list[str] | tuple[str, ...] = (), org_id: str | None = None) -> None:
        """Drop cached entries (this process and Redis) after a key, org or budget change.

        The writer of an org-wide change passes every key hash of the org, so Redis entries
        cached by replicas that no longer run are dropped too. A new key's hash is announced
        too, so a lookup that missed just before its creation does not keep refusing it.
        """
        self._generation += 1
        hashes = set(key_hashes)
        # One scan finds the entries cached by id (signed requests) too; key changes are rare.
        for lookup, (info, _) in list(self._cache.items()):
            if info.key.key_hash in hashes or (org_id and info.org.id == org_id):
                del self._cache[lookup]
                hashes.add(info.key.key_hash)
        for h in hashes:
            self._unknown.pop(h, None)
        if self._redis is not None and hashes:
            try:
                await self._redis.delete(*(self._keys.api_key(h) for h in hashes))
            except (RedisError, OSError, TimeoutError) as e:
                log.warning("could not drop cached keys from Redis (%s)", type(e).__name__)

    async def on_change(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == RESYNC:
            self._generation += 1
            self._cache.clear()
            self._unknown.clear()
        elif kind in ("key", "org", "budget"):
            await self.forget(key_hashes=payload.get("key_hashes") or (), org_id=payload.get("org_id"))
