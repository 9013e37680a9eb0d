"""The upstream connection pool: per-host LIFO keep-alive connections, capped, and the request entry point.

`UpstreamPool.request` encodes the POST once, reuses an idle connection (retrying once on a
fresh one if the pod had closed it), opens at most `max_connections_per_host` connections per
pod (more requests queue, first come first served) and returns once the status and headers arrived.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Self
from urllib.parse import urlsplit

from gateway.errors import ConfigError
from gateway.upstream.connection import Connection, UpstreamResponse, headers_arrived
from gateway.upstream.errors import UpstreamConnectError, UpstreamSaturated, UpstreamTimeoutError
from gateway.upstream.hosts import HostSlots, HostStats

_MAX_TARGETS = 1024  # parsed base URLs kept; endpoints are few, this only bounds a misuse


@dataclass(slots=True)
class PoolStats:
    """Counters since start (opened ... saturated) and, read from `UpstreamPool.stats`, gauges of now.

    `queued` counts requests that had to wait for a connection, `saturated` those that gave up
    after queue_timeout_s; `open` = `in_use` + `idle` connections and `waiting` requests, all hosts.
    """

    opened: int = 0
    reused: int = 0
    stale_retries: int = 0
    queued: int = 0
    saturated: int = 0
    open: int = 0
    in_use: int = 0
    idle: int = 0
    waiting: int = 0


@dataclass(frozen=True, slots=True)
class _Target:
    key: tuple[str, str, int]
    host: str
    port: int
    ssl: ssl.SSLContext | None
    host_slots: HostSlots
    prefix: bytes
    head: bytes  # fixed request headers, each ending in CRLF
    lines: dict[str, bytes] = field(default_factory=dict)  # path -> request line + fixed headers


class UpstreamPool:
    """Keep-alive connections per (scheme, host, port), most recently used first, at most N per host.

    Args:
        connect_timeout_s: limit for TCP connect plus TLS handshake.
        read_timeout_s: limit for silence from the pod while a response is awaited or read.
        max_idle_per_host: idle connections kept per host; more are closed on release.
        idle_ttl_s: idle connections older than this are closed (checked on use and by a timer).
        ssl_context: for https endpoints; default: the system's default verifying context.
        max_connections_per_host: connections (connecting, in use and idle) open to one host at
            most; a request that finds none free waits, first come first served.
        queue_timeout_s: longest such wait before `UpstreamSaturated`.

    Raises:
        ConfigError: a timeout that is not a positive number, a negative max_idle_per_host or a
            max_connections_per_host below 1.
    """

    def __init__(self, *, connect_timeout_s: float = 5.0, read_timeout_s: float = 600.0,
                 max_idle_per_host: int = 64, idle_ttl_s: float = 60.0,
                 ssl_context: ssl.SSLContext | None = None, max_connections_per_host: int = 256,
                 queue_timeout_s: float = 5.0) -> None:
        for name, value in (("connect_timeout_s", connect_timeout_s), ("read_timeout_s", read_timeout_s),
                            ("idle_ttl_s", idle_ttl_s), ("queue_timeout_s", queue_timeout_s)):
            if not 0 < value < float("inf"):  # also rejects NaN
                raise ConfigError(f"{name}: {value} must be a positive number of seconds", param=name)
        if max_idle_per_host < 0:
            raise ConfigError(f"max_idle_per_host: {max_idle_per_host} must be >= 0", param="max_idle_per_host")
        if max_connections_per_host < 1:
            raise ConfigError(f"max_connections_per_host: {max_connections_per_host} must be >= 1",
                              param="max_connections_per_host")
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_idle_per_host = max_idle_per_host
        self.idle_ttl_s = idle_ttl_s
        self.max_connections_per_host = max_connections_per_host
        self.queue_timeout_s = queue_timeout_s
        self._stats = PoolStats()
        self._ssl = ssl_context
        self._targets: dict[str, _Target] = {}
        self._hosts: dict[tuple[str, str, int], HostSlots] = {}
        self._all: set[Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._drained: asyncio.Future[None] | None = None
        self._closed = False

    @property
    def stats(self) -> PoolStats:
        """Counters since start, with the gauges (open, in_use, idle, waiting) filled in for now."""
        stats = self._stats
        stats.open = stats.in_use = stats.idle = stats.waiting = 0
        for host in self._hosts.values():
            stats.open += host.open
            stats.idle += len(host.idle)
            stats.waiting += len(host.waiters)
        stats.in_use = stats.open - stats.idle
        return stats

    def host_stats(self, base_url: str) -> HostStats:
        """Connections and queued requests of the host `base_url` points to (all zero if never used)."""
        target = self._targets.get(base_url)
        if target is None:
            try:
                target = self._target(base_url)
            except UpstreamConnectError:
                return HostStats()
        return target.host_slots.stats()

    async def request(self, base_url: str, path: str, body: bytes,
                      headers: Sequence[tuple[str, str]] = ()) -> UpstreamResponse:
        """POST `body` (JSON) to `base_url` + `path`; returns once the status and headers arrived.

        A reused keep-alive connection that fails before any response byte is retried once on a
        new connection (the pod closed it while idle). With max_connections_per_host open, the
        request waits for one to be released or to close, at most queue_timeout_s.

        Raises:
            UpstreamConnectError: refused, reset before answering, DNS or TLS failure, bad URL.
            UpstreamTimeoutError: connect_timeout_s or read_timeout_s exceeded.
            UpstreamProtocolError: malformed response.
            UpstreamSaturated: no connection came free within queue_timeout_s; nothing was sent.
            ValueError: a header or the path contains CR/LF or non-latin-1 characters.
        """
        if self._closed:
            raise UpstreamConnectError("The upstream connection pool is closed.")
        target = self._targets.get(base_url) or self._target(base_url)
        data = _encode(target, path, body, headers)
        host = target.host_slots
        conn = self._pop_idle(host) if host.idle else None
        if conn is None:
            if host.waiters or host.open >= self.max_connections_per_host:
                conn = await self._wait_turn(host)  # a released connection, or None: a slot to connect with
            else:
                host.open += 1
        if conn is not None:
            self._stats.reused += 1
            resp = conn.send(data)
            try:
                await headers_arrived(resp)
                return resp
            except UpstreamConnectError:
                self._stats.stale_retries += 1
            conn = await self._retry_slot(host)  # the stale connection gave its slot back on closing
            if conn is not None:
                self._stats.reused += 1
                resp = conn.send(data)
                await headers_arrived(resp)
                return resp
        conn = await self._connect(target)
        resp = conn.send(data)
        await headers_arrived(resp)
        return resp

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection, idle or in use, fail queued requests, and wait until all are gone."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for host in self._hosts.values():
            host.fail_waiters(UpstreamConnectError("The upstream connection pool is closed."))
            host.idle.clear()
        for conn in list(self._all):
            conn.abort()
        if self._all:
            self._drained = asyncio.get_running_loop().create_future()
            async with asyncio.timeout(5.0):
                await self._drained

    # --- slots: at most max_connections_per_host open, FIFO waiters ----------------------------
    async def _wait_turn(self, host: HostSlots) -> Connection | None:
        """Queue until a released connection (returned) or a slot (None, the caller connects) is ours.

        Raises:
            UpstreamSaturated: nothing came free within queue_timeout_s.
            UpstreamConnectError: the pool closed meanwhile.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.queue_timeout_s
        self._stats.queued += 1
        while True:
            waiter: asyncio.Future[Connection | None] = loop.create_future()
            host.waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    grant = await waiter
            except TimeoutError as e:
                self._give_back(host, waiter)
                self._stats.saturated += 1
                raise UpstreamSaturated(self.max_connections_per_host, self.queue_timeout_s) from e
            except BaseException:  # cancelled (the client left) or the pool closed: leak nothing
                self._give_back(host, waiter)
                raise
            if grant is None or not grant.closed:
                return grant
            # The released connection died before we ran; its slot went on to the next in line.
            if not host.waiters and host.open < self.max_connections_per_host:
                host.open += 1
                return None

    def _give_back(self, host: HostSlots, waiter: asyncio.Future[Connection | None]) -> None:
        """A waiter leaves the queue: pass on whatever it was granted, so no slot leaks."""
        if not waiter.done():
            waiter.cancel()
        if waiter.cancelled() or waiter.exception() is not None:
            if waiter in host.waiters:
                host.waiters.remove(waiter)
            return
        grant = waiter.result()
        if grant is None:
            self._slot_freed(host)
        else:
            self.put_idle(grant)  # hands it to the next waiter, or keeps it idle

    async def _retry_slot(self, host: HostSlots) -> Connection | None:
        """After a stale connection: a slot for a fresh one (None), or at the cap a released connection."""
        if host.idle and host.open >= self.max_connections_per_host and not host.waiters:
            oldest = host.idle.pop(0)  # likely as stale as the one that just failed
            oldest.idle = False
            oldest.abort()  # frees its slot now
        if not host.waiters and host.open < self.max_connections_per_host:
            host.open += 1
            return None
        return await self._wait_turn(host)

    def release_slot(self, conn: Connection) -> None:
        """`conn` closed (or never connected): its slot goes to the longest waiter, or is freed."""
        if conn.counted:
            conn.counted = False
            self._slot_freed(self._hosts[conn.key])

    def _slot_freed(self, host: HostSlots) -> None:
        if not host.waiters or self._closed or not host.hand_over(None):
            host.open -= 1

    # --- internals --------------------------------------------------------
    def _target(self, base_url: str) -> _Target:
        try:
            parts = urlsplit(base_url)
            port = parts.port
        except ValueError as e:
            raise UpstreamConnectError("The endpoint URL is not valid.") from e
        scheme = parts.scheme.lower()
        host = parts.hostname
        if scheme not in ("http", "https") or not host:
            raise UpstreamConnectError("The endpoint URL must start with http:// or https:// and name a host.")
        default = 443 if scheme == "https" else 80
        port = port or default
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        if not host.isascii():
            host = host.encode("idna").decode("ascii")
        netloc = f"[{host}]" if ":" in host else host
        if port != default:
            netloc = f"{netloc}:{port}"
        head = f"Host: {netloc}\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n".encode("ascii")
        key = (scheme, host, port)
        slots = self._hosts.get(key)
        if slots is None:
            slots = self._hosts[key] = HostSlots(key)
        target = _Target(key=key, host=host, port=port, ssl=context, host_slots=slots,
                         prefix=parts.path.rstrip("/").encode("ascii"), head=head)
        if len(self._targets) >= _MAX_TARGETS:
            self._targets.clear()
            for unused in [k for k, h in self._hosts.items() if not h.open and not h.waiters and k != key]:
                del self._hosts[unused]
        self._targets[base_url] = target
        return target

    async def _connect(self, target: _Target) -> Connection:
        """Open a connection on the slot the caller took; the slot is given back if this fails."""
        loop = asyncio.get_running_loop()
        conn = Connection(self, target.key, loop)
        try:
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    await loop.create_connection(lambda: conn, target.host, target.port, ssl=target.ssl,
                                                 server_hostname=target.host if target.ssl else None)
            except TimeoutError as e:
                raise UpstreamTimeoutError(
                    f"Connecting to the model endpoint took longer than {self.connect_timeout_s:g} s.") from e
            except OSError as e:  # refused, unreachable, DNS (gaierror), TLS (SSLError)
                raise UpstreamConnectError(f"Could not connect to the model endpoint ({type(e).__name__}).") from e
            if conn.closed:  # reset right after connect, before we could use it
                raise UpstreamConnectError("The model endpoint closed the connection before answering.")
            if self._closed:
                conn.abort()
                raise UpstreamConnectError("The upstream connection pool is closed.")
        except BaseException:  # also cancellation while connecting
            self.release_slot(conn)
            raise
        self._all.add(conn)
        self._stats.opened += 1
        return conn

    def _pop_idle(self, host: HostSlots) -> Connection | None:
        idle = host.idle
        oldest_allowed = idle[-1].loop.time() - self.idle_ttl_s
        while idle:
            conn = idle.pop()
            conn.idle = False
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                conn.abort()  # closing already: make sure its slot is free
                continue
            if conn.idle_since < oldest_allowed:  # LIFO: everything below is older still
                conn.abort()
                old = idle[:]
                idle.clear()
                for stale in old:
                    stale.idle = False
                    stale.abort()
                return None
            return conn
        return None

    def put_idle(self, conn: Connection) -> None:
        """Take back a connection whose response was fully read: to the longest waiter, else idle."""
        if self._closed or conn.closed:
            conn.abort()
            return
        host = self._hosts[conn.key]
        if host.waiters:
            conn.resume()
            if host.hand_over(conn):
                return
        if len(host.idle) >= self.max_idle_per_host:
            conn.abort()
            return
        conn.resume()
        conn.idle, conn.idle_since = True, conn.loop.time()
        host.idle.append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_at(conn.idle_since + self.idle_ttl_s, self._sweep, conn.loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = None
        now = loop.time()
        next_due: float | None = None
        for host in self._hosts.values():
            idle = host.idle
            while idle and idle[0].idle_since <= now - self.idle_ttl_s:
                conn = idle.pop(0)
                conn.idle = False
                conn.abort()
            if idle:
                due = idle[0].idle_since + self.idle_ttl_s
                next_due = due if next_due is None else min(next_due, due)
        if next_due is not None and not self._closed:
            self._sweeper = loop.call_at(next_due, self._sweep, loop)

    def forget(self, conn: Connection) -> None:
        """Called from connection_lost: the connection is gone."""
        self._all.discard(conn)
        if conn.idle:
            conn.idle = False
            host = self._hosts.get(conn.key)
            if host is not None and conn in host.idle:
                host.idle.remove(conn)
        self.release_slot(conn)
        if not self._all and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)


def _encode(target: _Target, path: str, body: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
    line = target.lines.get(path)
    if line is None:
        if not path.startswith("/") or _unsafe(path) or " " in path:
            raise ValueError("The upstream path must start with '/' and contain no spaces or line breaks.")
        line = b"POST %s%s HTTP/1.1\r\n%s" % (target.prefix, path.encode("ascii"), target.head)
        if len(target.lines) < _MAX_TARGETS:
            target.lines[path] = line
    extra = b""
    if headers:
        text = "".join([f"{name}: {value}\r\n" for name, value in headers])
        if text.count("\n") != len(headers) or text.count("\r") != len(headers) or "\0" in text:
            bad = next(name for name, value in headers if _unsafe(name) or _unsafe(value))
            raise ValueError(f"Header {bad!r} has a line break or NUL in its name or value.")
        extra = text.encode("latin-1")
    return b"%s%sContent-Length: %d\r\n\r\n%s" % (line, extra, len(body), body)


def _unsafe(text: str) -> bool:
    return "\r" in text or "\n" in text or "\0" in text
