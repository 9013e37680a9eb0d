"""The access log: one line per request, cheap enough for the hot path.

Lines are built with orjson, buffered in memory and written with one `os.write` per event
loop tick (not a `logging.Handler` per request); `close()` flushes what is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import orjson

log = logging.getLogger(__name__)

# What the data plane may add (under `appkeys.ACCESS`); nothing else from it reaches the log.
DATAPLANE_FIELDS = ("org_id", "key_id", "model", "endpoint", "upstream_ms", "error_code")
_TEXT_FIELDS = ("request_id", *DATAPLANE_FIELDS)
MAX_VALUE_CHARS = 200  # client-chosen strings (a path, a model name) cannot blow up a line
_FLUSH_BYTES = 64 * 1024  # a tick that buffered this much writes at once
_MILLIS = tuple(f".{i:03d}Z" for i in range(1000))  # formatting the milliseconds costs more than a lookup


class AccessLog:
    """Writes access lines (JSON objects, or `key=value` text) to a file descriptor.

    Args:
        fd: where lines go (default: stdout, next to the process's other output).
        fmt: "json" (one object per line) or "text".
    """

    def __init__(self, fd: int = 1, fmt: str = "json") -> None:
        self._fd = fd
        self._json = fmt == "json"
        self._buffer: list[bytes] = []
        self._size = 0
        self._scheduled = False
        self._closed = False
        self._second = -1
        self._stamp = ""
        self.lines = 0  # written or buffered; a cheap counter for tests and benchmarks
        self.dropped = 0  # lines lost because the descriptor refused them

    def _time(self) -> str:
        ms = time.time_ns() // 1_000_000
        second = ms // 1000
        if second != self._second:  # strftime once per second, not per line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._stamp + _MILLIS[ms % 1000]

    def write(self, request_id: str, method: str, path: str, status: int, latency_ms: float,
              extra: dict[str, Any] | None = None, error_code: str | None = None) -> None:
        """Record one request.

        Args:
            extra: the data plane's fields (see DATAPLANE_FIELDS); others are ignored.
            error_code: the code of the error answered, unless `extra` names one.
        """
        entry: dict[str, Any] = {"time": self._time(), "request_id": request_id, "method": method[:16],
                                 "path": path[:MAX_VALUE_CHARS], "status": status,
                                 "latency_ms": round(latency_ms, 3)}
        if extra:
            for name in DATAPLANE_FIELDS:
                value = extra.get(name)
                if value is not None:
                    entry[name] = value[:MAX_VALUE_CHARS] if isinstance(value, str) else value
        if error_code is not None and "error_code" not in entry:
            entry["error_code"] = error_code
        # default=str: a field of an unexpected type is logged as text, never fails the request.
        line = orjson.dumps(entry, default=str, option=orjson.OPT_APPEND_NEWLINE) if self._json else _text(entry)
        self.lines += 1
        if self._closed:
            self._write(line)
            return
        self._buffer.append(line)
        self._size += len(line)
        if self._size >= _FLUSH_BYTES:
            self.flush()
        elif not self._scheduled:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
                self._scheduled = True
            except RuntimeError:  # no loop (a test, a script): write now
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        lines = len(self._buffer)
        self._buffer.clear()
        self._size = 0
        self._write(data, lines)

    def _write(self, data: bytes, lines: int = 1) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:
            # A closed or full log pipe must not fail requests; count and say so once.
            if not self.dropped:
                log.error("access log: cannot write to fd %d (%s); dropping lines", self._fd, e.strerror)
            self.dropped += lines

    def close(self) -> None:
        """Flush; later lines (a straggling request during shutdown) are written unbuffered."""
        self.flush()
        self._closed = True


def _text(entry: dict[str, Any]) -> bytes:
    head = f"{entry['time']} {entry['method']} {_quoted(entry['path'])} {entry['status']} {entry['latency_ms']}ms"
    tail = " ".join(f"{name}={_quoted(entry[name])}" for name in _TEXT_FIELDS if name in entry)
    return f"{head} {tail}\n".encode()


def _quoted(value: Any) -> str:
    """Values with spaces, quotes or control characters are JSON-quoted: one record stays one line."""
    text = str(value)
    if text.isprintable() and " " not in text and '"' not in text and text:
        return text
    return orjson.dumps(text).decode()
