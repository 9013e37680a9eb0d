"""The live event hub: rollout, registry and health events fanned out to SSE clients (`/admin/v1/events`).

Publishing never blocks: each subscriber has a bounded queue, and a slow one loses its oldest
events and is told so with a `lagged` event. Rollout and registry events reach the hub of every
replica through the change bus; health events are this replica's prober's only.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

EVENT_TYPES = ("rollout", "registry", "health")
LAGGED = "lagged"  # delivered to a subscriber whose queue overflowed: {"dropped": n}
BUS_EVENT = "event"  # change-bus kind carrying {"type", "data"} to every replica's hub
BUS_REGISTRY = "registry"  # change-bus kind of registry changes: {"model", "environment"}
DEFAULT_QUEUE_SIZE = 256


@dataclass(frozen=True, slots=True)
class Event:
    """One event; `id` increases monotonically within this process (None for `lagged`)."""

    id: int | None
    type: str
    data: dict[str, Any]


class Subscription:
    """A subscriber's bounded queue; iterate it, or `await next_event(timeout)`.

    Use it as a context manager (or call `close`) so the hub forgets it.
    """

    def __init__(self, hub: EventHub, types: frozenset[str], max_queue: int) -> None:
        self._hub = hub
        self.types = types
        self._queue: deque[Event] = deque()
        self._max_queue = max_queue
        self._dropped = 0
        self._wakeup = asyncio.Event()
        self.closed = False

    def offer(self, event: Event) -> None:
        """Queue the event, dropping the oldest when full (the publisher never waits)."""
        if self.closed or event.type not in self.types:
            return
        if len(self._queue) >= self._max_queue:
            self._queue.popleft()
            self._dropped += 1
        self._queue.append(event)
        self._wakeup.set()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._hub._forget(self)
        self._wakeup.set()

    async def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event; None after `timeout` seconds without one.

        Raises:
            StopAsyncIteration: the subscription (or the hub) is closed.
        """
        while True:
            if self.closed:
                raise StopAsyncIteration
            if self._dropped:
                dropped, self._dropped = self._dropped, 0
                return Event(None, LAGGED, {"dropped": dropped})
            if self._queue:
                return self._queue.popleft()
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                return None

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        event = await self.next_event()
        assert event is not None  # no timeout given
        return event

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class EventHub:
    """In-process fan-out of live events to subscribers (one per SSE client)."""

    def __init__(self, *, max_queue: int = DEFAULT_QUEUE_SIZE) -> None:
        self._max_queue = max_queue
        self._subscribers: set[Subscription] = set()
        self._ids = itertools.count(1)
        self.closed = False

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self, types: Collection[str] = EVENT_TYPES) -> Subscription:
        """A new subscription to the given event types (a closed hub gives a closed one)."""
        unknown = set(types) - set(EVENT_TYPES)
        if unknown:
            raise ValueError(f"unknown event types {sorted(unknown)}: expected {', '.join(EVENT_TYPES)}")
        subscription = Subscription(self, frozenset(types) | {LAGGED}, self._max_queue)
        if self.closed:
            subscription.close()
        else:
            self._subscribers.add(subscription)
        return subscription

    def publish(self, type_: str, data: dict[str, Any]) -> Event:
        """Give the event the next id and queue it for every subscriber of its type."""
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type_!r}: expected {', '.join(EVENT_TYPES)}")
        event = Event(next(self._ids), type_, data)
        for subscription in list(self._subscribers):
            subscription.offer(event)
        return event

    async def on_bus(self, kind: str, payload: dict[str, Any]) -> None:
        """Change-bus handler: rollout events (kind `event`) and registry changes become live events."""
        if kind == BUS_REGISTRY:
            self.publish("registry", {"model": payload.get("model"), "environment": payload.get("environment")})
        elif kind == BUS_EVENT:
            type_, data = payload.get("type"), payload.get("data")
            if type_ in EVENT_TYPES and isinstance(data, dict):
                self.publish(type_, data)
            else:
                log.warning("ignoring a malformed live event from the change bus (type %r)", str(type_)[:32])

    def close(self) -> None:
        """End every subscription (their streams finish) and refuse new ones: the app is stopping."""
        self.closed = True
        for subscription in list(self._subscribers):
            subscription.close()

    def _forget(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)
