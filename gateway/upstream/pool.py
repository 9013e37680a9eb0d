"""The upstream connection pool: per-host LIFO keep-alive connections and the request entry point.

`UpstreamPool.request` encodes the POST once, reuses an idle connection (retrying once on a
fresh one if the pod had closed it) and returns as soon as the status and headers arrived.
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
from gateway.upstream.errors import UpstreamConnectError, UpstreamTimeoutError

_MAX_TARGETS = 1024  # parsed base URLs kept; endpoints are few, this only bounds a misuse


@dataclass(slots=True)
class PoolStats:
    """Counters for tests and benchmarks: connections opened, idle ones reused, stale retries."""

    opened: int = 0
    reused: int = 0
    stale_retries: int = 0


@dataclass(frozen=True, slots=True)
class _Target:
    key: tuple[str, str, int]
    host: str
    port: int
    ssl: ssl.SSLContext | None
    prefix: bytes
    head: bytes  # fixed request headers, each ending in CRLF
    lines: dict[str, bytes] = field(default_factory=dict)  # path -> request line + fixed headers


class UpstreamPool:
    """Keep-alive connections per (scheme, host, port), most recently used first.

    Args:
        connect_timeout_s: limit for TCP connect plus TLS handshake.
        read_timeout_s: limit for silence from the pod while a response is awaited or read.
        max_idle_per_host: idle connections kept per host; more are closed on release.
        idle_ttl_s: idle connections older than this are closed (checked on use and by a timer).
        ssl_context: for https endpoints; default: the system's default verifying context.

    Raises:
        ConfigError: a timeout that is not a positive number, or a negative max_idle_per_host.
    """

    def __init__(self, *, connect_timeout_s: float = 5.0, read_timeout_s: float = 600.0,
                 max_idle_per_host: int = 64, idle_ttl_s: float = 60.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        for name, value in (("connect_timeout_s", connect_timeout_s), ("read_timeout_s", read_timeout_s),
                            ("idle_ttl_s", idle_ttl_s)):
            if not 0 < value < float("inf"):  # also rejects NaN
                raise ConfigError(f"{name}: {value} must be a positive number of seconds", param=name)
        if max_idle_per_host < 0:
            raise ConfigError(f"max_idle_per_host: {max_idle_per_host} must be >= 0", param="max_idle_per_host")
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_idle_per_host = max_idle_per_host
        self.idle_ttl_s = idle_ttl_s
        self.stats = PoolStats()
        self._ssl = ssl_context
        self._targets: dict[str, _Target] = {}
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._all: set[Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._drained: asyncio.Future[None] | None = None
        self._closed = False

    async def request(self, base_url: str, path: str, body: bytes,
                      headers: Sequence[tuple[str, str]] = ()) -> UpstreamResponse:
        """POST `body` (JSON) to `base_url` + `path`; returns once the status and headers arrived.

        A reused keep-alive connection that fails before any response byte is retried once on a
        new connection (the pod closed it while idle).

        Raises:
            UpstreamConnectError: refused, reset before answering, DNS or TLS failure, bad URL.
            UpstreamTimeoutError: connect_timeout_s or read_timeout_s exceeded.
            UpstreamProtocolError: malformed response.
            ValueError: a header or the path contains CR/LF or non-latin-1 characters.
        """
        if self._closed:
            raise UpstreamConnectError("The upstream connection pool is closed.")
        target = self._targets.get(base_url) or self._target(base_url)
        data = _encode(target, path, body, headers)
        conn = self._pop_idle(target.key)
        if conn is not None:
            self.stats.reused += 1
            resp = conn.send(data)
            try:
                await headers_arrived(resp)
                return resp
            except UpstreamConnectError:
                self.stats.stale_retries += 1
        conn = await self._connect(target)
        resp = conn.send(data)
        await headers_arrived(resp)
        return resp

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection, idle or in use, and wait until they are gone."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._idle.clear()
        for conn in list(self._all):
            conn.abort()
        if self._all:
            self._drained = asyncio.get_running_loop().create_future()
            async with asyncio.timeout(5.0):
                await self._drained

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
        target = _Target(key=(scheme, host, port), host=host, port=port, ssl=context,
                         prefix=parts.path.rstrip("/").encode("ascii"), head=head)
        if len(self._targets) >= _MAX_TARGETS:
            self._targets.clear()
        self._targets[base_url] = target
        return target

    async def _connect(self, target: _Target) -> Connection:
        loop = asyncio.get_running_loop()
        conn = Connection(self, target.key, loop)
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
        self._all.add(conn)
        self.stats.opened += 1
        return conn

    def _pop_idle(self, key: tuple[str, str, int]) -> Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest_allowed = idle[-1].loop.time() - self.idle_ttl_s
        while idle:
            conn = idle.pop()
            conn.idle = False
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if conn.idle_since < oldest_allowed:  # LIFO: everything below is older still
                conn.abort()
                for old in idle:
                    old.idle = False
                    old.abort()
                idle.clear()
                return None
            return conn
        return None

    def put_idle(self, conn: Connection) -> None:
        if self._closed or conn.closed:
            conn.abort()
            return
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        if len(idle) >= self.max_idle_per_host:
            conn.abort()
            return
        conn.resume()
        conn.idle, conn.idle_since = True, conn.loop.time()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_at(conn.idle_since + self.idle_ttl_s, self._sweep, conn.loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = None
        now = loop.time()
        next_due: float | None = None
        for idle in self._idle.values():
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
        self._all.discard(conn)
        if conn.idle:
            conn.idle = False
            idle = self._idle.get(conn.key)
            if idle is not None and conn in idle:
                idle.remove(conn)
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
