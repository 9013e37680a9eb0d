"""A lean pipelined asyncio Redis client for the hot path (limits: EVALSHA reserve and settle).

redis-py spends ~100 µs of CPU per command; one pipelined RESP2 connection does it in a fraction.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, Self
from urllib.parse import urlsplit

from redis.connection import parse_url
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    DataError,
    ExecAbortError,
    InvalidResponse,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,  # redis-py's own, so RedisLimiter's
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,  # outage handling applies unchanged
)

from gateway.errors import InvalidRequest

# Error-reply prefixes that redis-py maps to its own subclasses (the prefix is stripped, as there).
_ERRORS: dict[bytes, type[RedisError]] = {
    b"NOSCRIPT": NoScriptError,
    b"WRONGPASS": AuthenticationError,
    b"NOAUTH": AuthenticationError,
    b"NOPERM": NoPermissionError,
    b"READONLY": ReadOnlyError,
    b"LOADING": BusyLoadingError,
    b"OOM": OutOfMemoryError,
    b"EXECABORT": ExecAbortError,
}


class _Incomplete(Exception):
    """The buffer ends inside a reply; `end` is the least buffer length that could complete it."""

    def __init__(self, end: int) -> None:
        self.end = end


def _error(line: bytes) -> RedisError:
    code, _, rest = line.partition(b" ")
    cls = _ERRORS.get(code)
    if cls is None:
        return ResponseError(line.decode(errors="replace"))
    return cls(rest.decode(errors="replace"))


def _parse(buf: bytes, pos: int) -> tuple[Any, int]:
    """One RESP2 reply starting at `pos`: (value, position after it). Raises _Incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete(len(buf) + 1)
    kind = buf[pos]
    if kind == 36:  # $ bulk string
        size = int(buf[pos + 1:end])
        if size < 0:
            return None, end + 2
        stop = end + 2 + size
        if stop + 2 > len(buf):
            raise _Incomplete(stop + 2)
        return buf[end + 2:stop], stop + 2
    if kind == 58:  # : integer
        return int(buf[pos + 1:end]), end + 2
    if kind == 43:  # + simple string
        return buf[pos + 1:end], end + 2
    if kind == 45:  # - error
        return _error(buf[pos + 1:end]), end + 2
    if kind == 42:  # * array
        count = int(buf[pos + 1:end])
        if count < 0:
            return None, end + 2
        pos = end + 2
        items = []
        for _ in range(count):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    raise InvalidResponse(f"Protocol error: unexpected reply type byte {kind!r}")


def encode_command(args: tuple[Any, ...]) -> bytes:
    """RESP2 array of bulk strings; bytes, str (UTF-8), int and float arguments, like redis-py."""
    # Fast path, the hot one (str and int arguments): one str, encoded once. Lengths count
    # characters, so it is right only when every character is one byte, as the final check says.
    parts = [f"*{len(args)}"]
    for arg in args:
        kind = type(arg)
        if kind is int:
            arg = str(arg)
        elif kind is not str:
            return _encode_bytes(args)
        parts.append(f"${len(arg)}\r\n{arg}")
    parts.append("")
    text = "\r\n".join(parts)
    data = text.encode()
    return data if len(data) == len(text) else _encode_bytes(args)


def _encode_bytes(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, (bytes, bytearray, memoryview)):
            data = bytes(arg)
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int) and not isinstance(arg, bool):
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(float(arg)).encode()
        else:  # None and bool are refused, as redis-py does: they have no obvious encoding
            raise DataError(f"Invalid input of type {type(arg).__name__!r}: convert to bytes, str, int or float first")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Connection(asyncio.Protocol):
    """One pipelined connection: commands go out as they come, replies resolve futures in FIFO order.

    A single timer watches the oldest pending command: replies arrive in order, so when it is
    overdue the connection is stuck, and every pending command fails and the connection drops.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float, where: str) -> None:
        self._loop = loop
        self._timeout_s = timeout_s
        self._where = where
        self._transport: asyncio.Transport | None = None
        self._waiters: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._partial = bytearray()  # the start of a reply that has not fully arrived
        self._partial_needs = 0  # bytes it needs at least before parsing is worth another try
        self._watchdog: asyncio.TimerHandle | None = None
        self.closed = False

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else ""
        self.fail(RedisConnectionError(f"Connection to Redis at {self._where} lost{reason}"))

    def eof_received(self) -> bool | None:
        self.fail(RedisConnectionError(f"Redis at {self._where} closed the connection"))
        return None

    def data_received(self, data: bytes) -> None:
        if self._partial:
            self._partial += data
            if len(self._partial) < self._partial_needs:
                return  # a large reply still arriving: do not parse it again and again
            data = bytes(self._partial)
            self._partial.clear()
        pos, size, waiters = 0, len(data), self._waiters
        try:
            while pos < size:
                reply, pos = _parse(data, pos)
                future = waiters.popleft()[0]
                if future.done():  # its caller was cancelled: the reply is consumed and dropped
                    continue
                if isinstance(reply, RedisError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except _Incomplete as e:
            self._partial += memoryview(data)[pos:]
            self._partial_needs = e.end - pos
        except (InvalidResponse, ValueError, IndexError) as e:  # garbage or an unsolicited reply
            self.fail(InvalidResponse(f"Protocol error from Redis at {self._where}: {e}"))

    # --- calls -----------------------------------------------------------------------------

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue one encoded command; the future gets its reply (or the connection's failure)."""
        loop, waiters = self._loop, self._waiters
        future = loop.create_future()
        deadline = loop.time() + self._timeout_s
        if not waiters:
            # Nothing in flight (the sequential case): write now. Otherwise coalesce this tick's
            # commands into one write, one syscall for many callers (half the CPU at 16 callers).
            self._transport.write(command)  # type: ignore[union-attr]
            if self._watchdog is None:
                self._watchdog = loop.call_at(deadline, self._check)
        else:
            self._out.append(command)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
        waiters.append((future, deadline))
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and not self.closed:
            self._transport.write(b"".join(self._out))  # type: ignore[union-attr]
        self._out.clear()

    def _check(self) -> None:
        self._watchdog = None
        if not self._waiters or self.closed:
            return
        now, deadline = self._loop.time(), self._waiters[0][1]
        if now >= deadline:
            self.fail(RedisTimeoutError(f"Timeout reading from Redis at {self._where} ({self._timeout_s:g} s)"))
        else:
            self._watchdog = self._loop.call_at(deadline, self._check)

    def fail(self, error: Exception) -> None:
        """Fail every pending command with `error` and drop the connection (callers reconnect)."""
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._out.clear()
        waiters, self._waiters = self._waiters, deque()
        for future, _ in waiters:
            if not future.done():  # one instance each: raising it sets __traceback__/__context__
                future.set_exception(type(error)(*error.args))
        if self._transport is not None:
            self._transport.abort()


class FastRedis:
    """Pipelined Redis client over one connection: `ScriptClient` for RedisLimiter, and more.

    Connects on first use and again after the connection is lost or timed out. Every command
    is bounded by `timeout_s` (plus `connect_timeout_s` when it had to connect). Replies are
    raw: bulk and simple strings as bytes, integers as int, arrays as lists, nil as None.

    Raises (redis.exceptions): ResponseError for error replies (NoScriptError for NOSCRIPT,
    AuthenticationError for WRONGPASS/NOAUTH), ConnectionError when Redis is unreachable or the
    connection drops, TimeoutError when Redis does not answer within `timeout_s`.
    """

    bounds_each_call = True  # RedisLimiter skips its own timeout scope for such clients

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = 0.25,
        connect_timeout_s: float = 0.25,
    ) -> None:
        if not timeout_s > 0 or not connect_timeout_s > 0:
            raise InvalidRequest("timeout_s and connect_timeout_s must be positive")
        self._host, self._port, self._path = host, port, path
        self._db, self._username, self._password = db, username, password
        self._ssl = ssl_context
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._where = path or f"{host}:{port}"  # never the credentials
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 0.25, connect_timeout_s: float = 0.25) -> FastRedis:
        """`redis://[[user]:password@]host[:port][/db]`, `rediss://…` (TLS) or `unix:///path?db=N`."""
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise InvalidRequest("redis URL is invalid: expected redis://, rediss:// or unix://")
        try:
            options = parse_url(url)
        except ValueError as e:  # redis-py's messages name the bad part, never the password
            raise InvalidRequest(f"redis URL is invalid: {e}") from e
        return cls(
            host=options.get("host") or "127.0.0.1",
            port=int(options.get("port") or 6379),
            path=options.get("path"),
            db=int(options.get("db") or 0),
            username=options.get("username"),
            password=options.get("password"),
            ssl_context=ssl.create_default_context() if scheme == "rediss" else None,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def execute(self, *args: Any) -> Any:
        """Send one command (e.g. `execute("SET", "k", 1)`) and return its raw reply.

        Not for commands that answer more than once (SUBSCRIBE, MONITOR) or block longer than
        `timeout_s` (BLPOP 0): the connection would be dropped as stuck.
        """
        if not args:
            raise DataError("execute() needs a command")  # Redis answers nothing to an empty one
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connected()
        return await conn.send(encode_command(args))

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        """EVALSHA; NoScriptError when Redis does not have the script (load it, then retry)."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connected()
        return await conn.send(encode_command(("EVALSHA", sha, numkeys, *keys_and_args)))

    async def script_load(self, script: str) -> str:
        """Load a Lua script; returns its SHA-1 (as str, like redis-py)."""
        return (await self.execute("SCRIPT", "LOAD", script)).decode()

    async def ping(self) -> bool:
        return await self.execute("PING") == b"PONG"

    async def aclose(self) -> None:
        """Close the connection; pending and later commands fail with ConnectionError."""
        self._closed = True
        if self._connecting is not None:  # bounded by connect_timeout_s; its connection is closed below
            await asyncio.gather(self._connecting, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.fail(RedisConnectionError("Redis client closed"))

    # --- connecting ------------------------------------------------------------------------

    async def _connected(self) -> _Connection:
        """The live connection, connecting once for all concurrent callers."""
        if self._closed:
            raise RedisConnectionError("Redis client closed")
        task = self._connecting
        if task is None:
            task = self._connecting = asyncio.get_running_loop().create_task(self._connect())
            task.add_done_callback(self._connect_done)
        # shield: a cancelled caller must not cancel the connect that other callers wait for
        return await asyncio.shield(task)

    def _connect_done(self, task: asyncio.Task[_Connection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._conn = task.result()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = _Connection(loop, self._timeout_s, self._where)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if self._path is not None:
                    await loop.create_unix_connection(lambda: conn, self._path)
                else:
                    await loop.create_connection(
                        lambda: conn, self._host, self._port, ssl=self._ssl,
                        server_hostname=self._host if self._ssl else None,
                    )
                if self._password is not None:
                    auth = ("AUTH", self._username, self._password) if self._username else ("AUTH", self._password)
                    await conn.send(encode_command(auth))
                if self._db:
                    await conn.send(encode_command(("SELECT", self._db)))
        except BaseException as e:  # close the half-made connection whatever happened, then re-raise
            conn.fail(RedisConnectionError(f"Connecting to Redis at {self._where} failed"))
            if isinstance(e, TimeoutError):  # asyncio.timeout's (the builtin), before OSError: it is one
                raise RedisTimeoutError(
                    f"Timeout connecting to Redis at {self._where} ({self._connect_timeout_s:g} s)") from e
            if isinstance(e, OSError):
                raise RedisConnectionError(f"Error connecting to Redis at {self._where}: {e.strerror or e}") from e
            raise  # redis errors (WRONGPASS, bad db, a handshake timeout) and cancellation as they are
        return conn
