"""API-key authentication with an in-process cache (and a Redis cache shared by replicas).

Keys are looked up by the SHA-256 of the presented secret, so the secret never reaches
the store, Redis or a log. Revocations and budget changes arrive on the change bus and
drop the cached entries at once in every process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.auth.secrets import hash_api_key, tokens_equal
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


class Authenticator:
    def __init__(
        self,
        store: Store,
        *,
        redis: aioredis.Redis | None = None,
        keys: RedisKeys | None = None,
        ttl_s: float = 60.0,
        redis_ttl_s: int = 120,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._redis = redis
        self._keys = keys or RedisKeys()
        self._ttl_s = ttl_s
        self._redis_ttl_s = redis_ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[KeyInfo, float]] = {}

    async def authenticate(self, authorization: str | None) -> KeyInfo:
        """Return the caller's KeyInfo, or raise AuthenticationFailed (401)."""
        key_hash = hash_api_key(_bearer(authorization))
        now = self._clock()
        cached = self._cache.get(key_hash)
        if cached is not None and cached[1] > now:
            info = cached[0]
        else:
            info = await self._load(key_hash)
            self._cache[key_hash] = (info, now + self._ttl_s)
        if not tokens_equal(info.key.key_hash, key_hash):
            raise AuthenticationFailed("Incorrect API key provided.")
        if info.key.status != "active":
            raise AuthenticationFailed("This API key has been revoked.", code="revoked_api_key")
        if info.expires_ts is not None and info.expires_ts <= now:
            raise AuthenticationFailed("This API key has expired.", code="expired_api_key")
        return info

    async def _load(self, key_hash: str) -> KeyInfo:
        if self._redis is not None:
            try:
                raw = await self._redis.get(self._keys.api_key(key_hash))
                if raw is not None:
                    return KeyInfo.from_json(raw)
            except (RedisError, OSError, asyncio.TimeoutError) as e:
                log.debug("key cache unavailable (%s)", type(e).__name__)
        key = await self._store.find_api_key_by_hash(key_hash)
        if key is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        try:
            org = await self._store.get_org(key.org_id)
        except NotFound as e:
            raise AuthenticationFailed("Incorrect API key provided.") from e
        budgets = tuple(b for b in await self._store.list_budgets(org.id) if b.key_id in (None, key.id))
        info = KeyInfo.build(key, org, budgets)
        if self._redis is not None:
            try:
                await self._redis.set(self._keys.api_key(key_hash), info.to_json(), ex=self._redis_ttl_s)
            except (RedisError, OSError, asyncio.TimeoutError) as e:
                log.debug("key cache write failed (%s)", type(e).__name__)
        return info

    async def forget(self, *, key_hashes: list[str] | tuple[str, ...] = (), org_id: str | None = None) -> None:
        """Drop cached entries (this process and Redis) after a key, org or budget change.

        The writer of an org-wide change passes every key hash of the org, so Redis entries
        cached by replicas that no longer run are dropped too.
        """
        hashes = list(key_hashes)
        if org_id:
            hashes += [h for h, (info, _) in self._cache.items() if info.org.id == org_id]
        for h in hashes:
            self._cache.pop(h, None)
        if self._redis is not None and hashes:
            try:
                await self._redis.delete(*(self._keys.api_key(h) for h in hashes))
            except (RedisError, OSError, asyncio.TimeoutError) as e:
                log.warning("could not drop cached keys from Redis (%s)", type(e).__name__)

    async def on_change(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == RESYNC:
            self._cache.clear()
        elif kind in ("key", "org", "budget"):
            await self.forget(key_hashes=payload.get("key_hashes") or (), org_id=payload.get("org_id"))
