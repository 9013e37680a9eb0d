"""The change bus: registry and key changes announced to every gateway process.

Without Redis the bus is in-process. With Redis, changes go out on a pub/sub channel and
every process (including the sender) applies them; a listener reconnects on failure and
asks subscribers for a full resync afterwards, since messages sent meanwhile were lost.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.redis.keyspace import RedisKeys

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], Awaitable[None]]

RESYNC = "resync"  # kind delivered to handlers after a reconnect: reload everything


class ChangeBus:
    """In-process bus; `RedisChangeBus` extends it across processes."""

    def __init__(self) -> None:
        self._handlers: list[Handler] = []
        self.degraded = False

    def subscribe(self, handler: Handler) -> None:
        self._handlers.append(handler)

    async def publish(self, kind: str, payload: dict[str, Any]) -> None:
        await self._deliver(kind, payload)

    async def _deliver(self, kind: str, payload: dict[str, Any]) -> None:
        for handler in self._handlers:
            try:
                await handler(kind, payload)
            except Exception:  # noqa: BLE001 - one bad handler must not stop the others
                log.exception("change handler failed for %s", kind)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisChangeBus(ChangeBus):
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, *, reconnect_s: float = 0.5) -> None:
        super().__init__()
        self._redis = redis
        self._channel = keys.changes_channel
        self._origin = uuid.uuid4().hex
        self._reconnect_s = reconnect_s
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()

    async def publish(self, kind: str, payload: dict[str, Any]) -> None:
        # Apply locally at once; other processes learn it from the channel.
        await self._deliver(kind, payload)
        message = orjson.dumps({"kind": kind, "origin": self._origin, "payload": payload})
        try:
            await self._redis.publish(self._channel, message)
        except (RedisError, OSError, asyncio.TimeoutError) as e:
            self.degraded = True
            log.warning("could not announce %s change on Redis (%s); other replicas see it at their next resync",
                        kind, type(e).__name__)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="change-bus")
        try:
            await asyncio.wait_for(self._ready.wait(), 2.0)
        except asyncio.TimeoutError:
            log.warning("change bus not subscribed yet; continuing degraded")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _listen(self) -> None:
        first = True
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                self.degraded = False
                self._ready.set()
                if not first:
                    await self._deliver(RESYNC, {})
                first = False
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if msg is None or msg.get("type") != "message":
                        continue
                    data = orjson.loads(msg["data"])
                    if data.get("origin") == self._origin:
                        continue
                    await self._deliver(data["kind"], data.get("payload") or {})
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, asyncio.TimeoutError, orjson.JSONDecodeError) as e:
                if not self.degraded:
                    log.warning("change bus lost Redis (%s); retrying", type(e).__name__)
                self.degraded = True
                first = False
                await asyncio.sleep(self._reconnect_s)
            finally:
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    log.debug("pubsub close failed", exc_info=True)
