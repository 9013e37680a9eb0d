"""One upstream keep-alive connection (asyncio.Protocol + httptools) and the response read over it.

The response and its connection are one state machine: parser callbacks fill the response,
the consumer drains it, and flow control and the read timeout sit between the two.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Self, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.upstream.errors import (
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)

if TYPE_CHECKING:
    from gateway.upstream.pool import UpstreamPool

BUFFER_LIMIT = 1 << 20  # bytes buffered for a slow consumer before reading from the pod pauses


class UpstreamResponse:
    """One response: status and headers at once, the body read whole or chunk by chunk.

    Call `release()` when done (returns a fully read keep-alive connection to the pool) or
    `close()` to abort; both are idempotent. `async with` releases on exit.
    """

    __slots__ = ("status", "_conn", "_raw", "_headers", "_chunks", "_size", "_started", "_headers_done",
                 "_complete", "_keep_alive", "_interim", "_error", "_waiter", "_last")

    def __init__(self, conn: Connection, now: float) -> None:
        self.status = 0
        self._conn: Connection | None = conn
        self._raw: list[tuple[bytes, bytes]] = []
        self._headers: CIMultiDictProxy[str] | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._started = False  # any response byte arrived
        self._headers_done = False
        self._complete = False  # the whole body arrived
        self._keep_alive = False
        self._interim = False  # parsing a 1xx response, which precedes the real one
        self._error: UpstreamError | UpstreamTimeout | None = None
        self._waiter: asyncio.Future[None] | None = None  # set while the consumer waits; cleared by _wake
        self._last = now  # loop time of the request or of the last byte from the pod

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """Response headers, case-insensitive (built on first access: the hot path rarely needs them)."""
        if self._headers is None:
            self._headers = CIMultiDictProxy(CIMultiDict(
                (name.decode("latin-1"), value.decode("latin-1")) for name, value in self._raw))
        return self._headers

    async def read(self) -> bytes:
        """The whole body (Content-Length, chunked or until close).

        Raises:
            UpstreamProtocolError: the connection closed mid-body or the response was closed.
            UpstreamTimeoutError: nothing arrived for read_timeout_s.
        """
        if self._complete:  # the usual case for small answers: no wait at all
            return self._take()
        taken: list[bytes] = []
        while not self._complete:
            self._check()
            if self._chunks:  # keep the buffer small so reading never pauses
                taken.extend(self._chunks)
                self._chunks, self._size = [], 0
            await self._wait()
        taken.extend(self._chunks)
        self._chunks, self._size = [], 0
        return b"".join(taken)

    def iter_chunks(self) -> _Chunks:
        """Async iterator over body data as it arrives (chunked encoding decoded); same errors as read()."""
        return _Chunks(self)

    def release(self) -> None:
        """Return the connection to the pool if the body fully arrived and keep-alive holds, else close it."""
        conn = self._conn
        if conn is None:
            return
        self._conn = conn.resp = None
        if self._waiter is not None:
            self._wake()
        if self._complete and self._keep_alive and self._error is None:
            conn.pool.put_idle(conn)
        else:
            conn.abort()

    def close(self) -> None:
        """Abort: close the connection, so the pod sees the disconnect and stops generating."""
        conn = self._conn
        if conn is not None:
            self._conn = conn.resp = None
            self._wake()
            conn.abort()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    # --- internals --------------------------------------------------------
    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._conn is None:
            raise UpstreamProtocolError("The upstream response was closed before its body was read.")

    async def _wait(self) -> None:
        conn = self._conn
        assert conn is not None
        if conn.paused:
            conn.resume()
        waiter = self._waiter = conn.loop.create_future()
        await waiter

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():  # done: the waiting task was cancelled
                waiter.set_result(None)

    def _fail(self, error: UpstreamError | UpstreamTimeout, cause: BaseException | None = None) -> None:
        if self._error is None and not self._complete:
            error.__cause__ = cause
            self._error = error
            self._wake()

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks, self._size = [], 0
        conn = self._conn
        if conn is not None and conn.paused:
            conn.resume()
        return data

    def _lost(self, exc: BaseException | None) -> None:
        if self._complete:
            return
        if not self._started:
            self._fail(UpstreamConnectError("The model endpoint closed the connection before answering."), exc)
        elif self._headers_done and not any(
                name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self._raw):
            self._complete, self._keep_alive = True, False  # body delimited by the close
            self._wake()
        else:
            self._fail(UpstreamProtocolError("The model endpoint closed the connection mid-response."), exc)


class _Chunks:
    """The iterator behind `UpstreamResponse.iter_chunks` (a class: no async-generator finalization)."""

    __slots__ = ("_resp",)

    def __init__(self, resp: UpstreamResponse) -> None:
        self._resp = resp

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        resp = self._resp
        while not resp._chunks:
            if resp._complete:
                raise StopAsyncIteration
            resp._check()
            await resp._wait()
        return resp._take()


class Connection(asyncio.Protocol):
    """One keep-alive connection; feeds the current response through a reused httptools parser.

    The read timeout is one lazy timer per connection, not one per request: it is armed when a
    request goes out and none is pending, and when it fires it re-arms from the last byte seen.
    """

    __slots__ = ("pool", "key", "loop", "transport", "parser", "resp", "closed", "paused", "idle", "idle_since",
                 "timer", "counted")

    def __init__(self, pool: UpstreamPool, key: tuple[str, str, int], loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.key = key
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.resp: UpstreamResponse | None = None
        self.closed = False
        self.paused = False
        self.idle = False
        self.idle_since = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.counted = True  # holds one of its host's slots until it closes (pool.release_slot)

    def send(self, data: bytes) -> UpstreamResponse:
        now = self.loop.time()
        resp = self.resp = UpstreamResponse(self, now)
        if self.timer is None:
            self.timer = self.loop.call_at(now + self.pool.read_timeout_s, self._on_timer)
        self.transport.write(data)  # type: ignore[union-attr]  # set in connection_made
        return resp

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
        if self.counted:  # now, not at connection_lost: a queued request may connect at once
            self.pool.release_slot(self)

    def pause(self) -> None:
        if not self.paused and not self.closed and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            if not self.closed and self.transport is not None:
                self.transport.resume_reading()

    def _on_timer(self) -> None:
        self.timer = None
        resp = self.resp
        if resp is None or resp._complete or resp._error is not None or self.closed:
            return  # idle again: the next request arms a new timer
        now = self.loop.time()
        timeout = self.pool.read_timeout_s
        due = now + timeout if self.paused else resp._last + timeout  # paused: the consumer is behind
        if now < due:
            self.timer = self.loop.call_at(due, self._on_timer)
            return
        resp._fail(UpstreamTimeoutError(f"The model endpoint sent nothing for {timeout:g} s."))
        self.abort()

    # --- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        resp = self.resp
        if resp is None:  # bytes on an idle connection: the pod is confused, do not reuse it
            self.abort()
            return
        resp._started = True
        resp._last = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            resp._fail(UpstreamProtocolError(f"The model endpoint sent a malformed response ({e})."), e)
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pool.forget(self)
        if self.resp is not None:
            self.resp._lost(exc)

    # --- httptools callbacks (only while a response is current: data_received checks) -----------
    def on_message_begin(self) -> None:
        resp = self.resp
        if resp is not None and resp._complete:  # bytes after the response: never reuse this connection
            resp._keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        resp = self.resp
        if resp is not None and not resp._complete:
            resp._raw.append((name, value))

    def on_headers_complete(self) -> None:
        resp = self.resp
        if resp is None or resp._complete:
            return
        status = self.parser.get_status_code()
        if status < 200:  # 100 Continue and friends: the real response follows
            resp._raw.clear()
            resp._interim = True
            return
        resp.status = status
        resp._keep_alive = self.parser.should_keep_alive()
        resp._headers_done = True
        if resp._waiter is not None:
            resp._wake()

    def on_body(self, body: bytes) -> None:
        resp = self.resp
        if resp is None or resp._complete:
            return
        resp._chunks.append(body)
        resp._size += len(body)
        if resp._size > BUFFER_LIMIT:
            self.pause()
        if resp._waiter is not None:
            resp._wake()

    def on_message_complete(self) -> None:
        resp = self.resp
        if resp is None or resp._complete:
            return
        if resp._interim:
            resp._interim = False
            return
        resp._complete = True
        if resp._waiter is not None:
            resp._wake()


async def headers_arrived(resp: UpstreamResponse) -> None:
    """Wait for the status line and headers; on any failure (or cancellation) drop the connection."""
    try:
        while not resp._headers_done:
            resp._check()
            waiter = resp._waiter = resp._conn.loop.create_future()  # type: ignore[union-attr]  # checked
            await waiter
    except BaseException:
        resp.close()
        raise
