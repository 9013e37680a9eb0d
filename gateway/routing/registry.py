"""The data plane's view of the model registry: an in-process snapshot, never a per-request query.

The snapshot is loaded from the store at start and refreshed periodically; changes arrive
on the change bus and are read from a per-model Redis entry (2-minute TTL) so replicas do
not stampede the store. If both the store and Redis fail, the last good snapshot serves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.observability.metrics import Metrics
from gateway.redis.bus import RESYNC
from gateway.redis.keyspace import RedisKeys
from gateway.routing.balancer import EndpointState
from gateway.store.base import Store
from gateway.store.models import Endpoint, Model, RegistryEntry

log = logging.getLogger(__name__)

def _register_store_errors() -> tuple[type[BaseException], ...]:
    from gateway.store.db import StoreUnavailable

    errors: list[type[BaseException]] = [OSError, asyncio.TimeoutError, StoreUnavailable]
    try:
        import sqlite3

        errors.append(sqlite3.Error)
    except ImportError:  # pragma: no cover
        pass
    try:
        import psycopg
        import psycopg_pool

        errors += [psycopg.Error, psycopg_pool.PoolTimeout]
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


STORE_ERRORS = _register_store_errors()


@dataclass(slots=True)
class Route:
    """One (model, environment) with live endpoint state."""

    model: Model
    states: list[EndpointState] = field(default_factory=list)


def _dt(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def entry_to_json(entry: RegistryEntry) -> bytes:
    return orjson.dumps({"model": entry.model.to_dict(), "endpoints": [e.to_dict() for e in entry.endpoints]})


def entry_from_json(raw: bytes) -> RegistryEntry:
    data = orjson.loads(raw)
    m = data["model"]
    model = Model(
        id=m["id"], name=m["name"], environment=m["environment"], status=m["status"],
        input_price=m["input_price"], output_price=m["output_price"], max_tokens=m["max_tokens"],
        fallbacks=tuple(m["fallbacks"]), metadata=m["metadata"], revision=m["revision"],
        created_at=_dt(m["created_at"]), updated_at=_dt(m["updated_at"]),
    )
    endpoints = tuple(
        Endpoint(
            id=e["id"], model_id=e["model_id"], url=e["url"], release=e["release"], weight=e["weight"],
            status=e["status"], last_health=e["last_health"], last_checked_at=_dt(e["last_checked_at"]),
            created_at=_dt(e["created_at"]), mirror_percent=float(e.get("mirror_percent", 0.0)),
        )
        for e in data["endpoints"]
    )
    return RegistryEntry(model=model, endpoints=endpoints)


class Registry:
    """Snapshot of `(model, environment) → Route`; lookups are dict reads."""

    def __init__(
        self,
        store: Store,
        *,
        redis: aioredis.Redis | None = None,
        keys: RedisKeys | None = None,
        ttl_s: int = 120,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._store = store
        self._redis = redis
        self._keys = keys or RedisKeys()
        self._ttl_s = ttl_s
        self._routes: dict[tuple[str, str], Route] = {}
        self.loaded_at: float | None = None
        self.store_ok = True
        self.redis_ok = True
        self.cache_hits = 0
        self.cache_misses = 0

    # --- reads (hot path) -------------------------------------------------
    def get(self, name: str, environment: str) -> Route | None:
        return self._routes.get((name, environment))

    def routes(self, environment: str | None = None) -> list[Route]:
        return [r for (_, env), r in self._routes.items() if environment is None or env == environment]

    def all_states(self) -> Iterable[EndpointState]:
        for route in self._routes.values():
            yield from route.states

    @property
    def degraded(self) -> bool:
        return not self.store_ok

    # --- loading ----------------------------------------------------------
    def _install(self, entry: RegistryEntry) -> None:
        key = (entry.model.name, entry.model.environment)
        old = self._routes.get(key)
        previous = {s.endpoint.id: s for s in old.states} if old else {}
        states = []
        for ep in entry.endpoints:
            state = previous.get(ep.id)
            if state is None:
                state = EndpointState(endpoint=ep, model_name=entry.model.name)
            else:
                state.endpoint = ep  # keep in-flight counts and ejection across reloads
                state.model_name = entry.model.name
            states.append(state)
        self._routes[key] = Route(model=entry.model, states=states)

    async def load_all(self) -> bool:
        """Reload everything from the store; on failure keep the last good snapshot."""
        try:
            entries = await self._store.registry()
        except STORE_ERRORS as e:
            self.store_ok = False
            log.warning("registry reload failed (%s); serving the last good snapshot", type(e).__name__)
            return False
        self.store_ok = True
        seen = set()
        for entry in entries:
            self._install(entry)
            seen.add((entry.model.name, entry.model.environment))
        for key in list(self._routes):
            if key not in seen:
                del self._routes[key]
        self.loaded_at = time.time()
        if self._redis is not None:
            await self._write_cache(entries)
        return True

    async def _write_cache(self, entries: list[RegistryEntry]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for entry in entries:
                    pipe.set(self._keys.registry_entry(entry.model.environment, entry.model.name),
                             entry_to_json(entry), ex=self._ttl_s)
                await pipe.execute()
            self.redis_ok = True
        except (RedisError, OSError, asyncio.TimeoutError) as e:
            self.redis_ok = False
            log.warning("registry cache write failed (%s)", type(e).__name__)

    async def reload_model(self, name: str, environment: str, *, prefer_cache: bool = True) -> None:
        """Refresh one model: from its Redis entry when present, else from the store."""
        raw = None
        if self._redis is not None and prefer_cache:
            try:
                raw = await self._redis.get(self._keys.registry_entry(environment, name))
                self.redis_ok = True
            except (RedisError, OSError, asyncio.TimeoutError):
                self.redis_ok = False
        if raw is not None:
            self.cache_hits += 1
            if self._metrics is not None:
                self._metrics.child(self._metrics.registry_cache, "hit").inc()
            self._install(entry_from_json(raw))
            return
        self.cache_misses += 1
        if self._metrics is not None:
            self._metrics.child(self._metrics.registry_cache, "miss").inc()
        entries = None
        try:
            entries = await self._store.registry(environment)
            self.store_ok = True
        except STORE_ERRORS as e:
            self.store_ok = False
            log.warning("could not reload %s/%s (%s); keeping the last good entry", environment, name, type(e).__name__)
            return
        match = [e for e in entries if e.model.name == name]
        if match:
            self._install(match[0])
            if self._redis is not None:
                await self._write_cache(match)
        else:
            self._routes.pop((name, environment), None)

    async def announce(self, name: str, environment: str) -> dict[str, str]:
        """Called by the writer after a registry change: refresh the Redis entry, return the bus payload."""
        try:
            entries = await self._store.registry(environment)
        except STORE_ERRORS:
            entries = []
        match = [e for e in entries if e.model.name == name]
        if self._redis is not None:
            try:
                if match:
                    await self._redis.set(self._keys.registry_entry(environment, name), entry_to_json(match[0]),
                                          ex=self._ttl_s)
                else:
                    await self._redis.delete(self._keys.registry_entry(environment, name))
            except (RedisError, OSError, asyncio.TimeoutError):
                self.redis_ok = False
        return {"model": name, "environment": environment}

    async def on_change(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == RESYNC:
            await self.load_all()
        elif kind == "registry":
            await self.reload_model(payload["model"], payload["environment"])

    async def refresh_forever(self, interval_s: float) -> None:
        """Periodic full reload: catches lost messages and health written by other replicas."""
        while True:
            await asyncio.sleep(interval_s)
            await self.load_all()
