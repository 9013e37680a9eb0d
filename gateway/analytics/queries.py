"""DuckDB sessions for the analytics API: a few `LakeQuery` objects reused across requests, each used by
one worker thread at a time, so a request does not pay for a new connection and a fresh lake listing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web

from analytics_lake.location import Lake

if TYPE_CHECKING:
    from analytics_lake.query import LakeQuery

T = TypeVar("T")
POOL_SIZE = 4


class QueryPool:
    """Runs `fn(LakeQuery)` in a worker thread on an idle session (a new one when all are busy).

    A session whose call raised is closed rather than reused: its DuckDB state is unknown."""

    def __init__(self, lake: Lake, *, size: int = POOL_SIZE) -> None:
        self._lake = lake
        self._size = size
        self._idle: list[LakeQuery] = []
        self._lock = threading.Lock()
        self._closed = False

    def _call(self, fn: Callable[[LakeQuery], T]) -> T:
        with self._lock:
            q = self._idle.pop() if self._idle else None
        if q is None:
            from analytics_lake.query import LakeQuery  # DuckDB loads on the first analytics query

            q = LakeQuery(self._lake)
        try:
            result = fn(q)
        except BaseException:
            q.close()
            raise
        with self._lock:
            if not self._closed and len(self._idle) < self._size:
                self._idle.append(q)
                q = None
        if q is not None:
            q.close()
        return result

    async def run(self, fn: Callable[[LakeQuery], T]) -> T:
        return await asyncio.to_thread(self._call, fn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for q in idle:
            q.close()


QUERY_POOL: web.AppKey[QueryPool] = web.AppKey("analytics_query_pool", QueryPool)
