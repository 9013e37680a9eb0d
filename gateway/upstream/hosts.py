"""Per-host bookkeeping of the upstream pool: idle keep-alive connections, open-connection count, waiters.

A burst must not open unbounded sockets to one pod, so requests past the cap queue here, first
come first served, for a released connection or for the slot of one that closed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.upstream.connection import Connection


@dataclass(frozen=True, slots=True)
class HostStats:
    """One host's connections right now: `open` = `in_use` + `idle` (connecting ones count as in use)."""

    open: int = 0
    in_use: int = 0
    idle: int = 0
    waiting: int = 0  # requests queued for a connection


class HostSlots:
    """The connections of one (scheme, host, port) and the requests queued for one.

    `open` counts every connection that holds a slot: connecting, in use or idle. A slot is
    taken before connecting and given back exactly once, when the connection closes (or its
    connect fails); while requests wait, a freed slot or a released connection goes straight
    to the longest waiter instead, so `waiters` is only ever non-empty while `open` is at the cap.
    """

    __slots__ = ("key", "idle", "open", "waiters")

    def __init__(self, key: tuple[str, str, int]) -> None:
        self.key = key
        self.idle: list[Connection] = []  # most recently used last
        self.open = 0
        self.waiters: deque[asyncio.Future[Connection | None]] = deque()

    def hand_over(self, grant: Connection | None) -> bool:
        """Give `grant` (a released connection, or None for a freed slot) to the longest waiter.

        Returns:
            False when nobody waits (the caller keeps the connection or frees the slot).
        """
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():  # done: cancelled, its task is leaving the queue
                waiter.set_result(grant)
                return True
        return False

    def fail_waiters(self, error: BaseException) -> None:
        """Wake every waiter with `error` (the pool is closing)."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def stats(self) -> HostStats:
        return HostStats(open=self.open, in_use=self.open - len(self.idle), idle=len(self.idle),
                         waiting=len(self.waiters))
