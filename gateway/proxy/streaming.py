"""SSE relay: pass an upstream vLLM stream through event by event, reading usage on the way.

The gateway always asks upstream for the final usage chunk (to settle budgets and bill);
the relay removes that chunk when the client did not ask for it, holds back `[DONE]` until
the usage event is durable, counts content events so a disconnect can still be billed, and
refuses anything that is not an event stream of JSON objects (an HTML error page, a proxy's
garbage) so that it never reaches the client dressed as one.
"""

from __future__ import annotations

import orjson

DONE = b"data: [DONE]"
_SEP = b"\n\n"
_FIELDS = (b"data:", b"event:", b"id:", b"retry:", b":")
MAX_EVENT_BYTES = 8 << 20  # an event this long without a separator is not an event stream


class GarbageStream(Exception):
    """The upstream body is not a stream of SSE events carrying JSON objects."""


def _valid_data(payload: bytes) -> bool:
    payload = payload.strip()
    return payload == b"[DONE]" or (payload.startswith(b"{") and payload.endswith(b"}"))


def _check(event: bytes) -> None:
    """Raise GarbageStream unless `event` is well-formed SSE whose data lines are JSON objects."""
    if event.startswith(b"data: {") and event.endswith(b"}") and b"\n" not in event:
        return  # vLLM's shape: one data line per event
    for line in event.split(b"\n"):
        if not line:
            continue
        if not line.startswith(_FIELDS):
            raise GarbageStream("not an SSE field")
        if line.startswith(b"data:") and not _valid_data(line[5:]):
            raise GarbageStream("SSE data is not a JSON object")


class SseRelay:
    __slots__ = ("_buf", "_client_wants_usage", "usage", "usage_seen", "content_events", "done")

    def __init__(self, *, client_wants_usage: bool) -> None:
        self._buf = b""
        self._client_wants_usage = client_wants_usage
        self.usage: object = None  # the usage chunk's `usage`, unvalidated (see proxy.usage)
        self.usage_seen = False
        self.content_events = 0
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        """Return the bytes to forward now; keeps an incomplete trailing event for later.

        Raises:
            GarbageStream: an event that is not SSE with JSON data, or no event separator in
                MAX_EVENT_BYTES.
        """
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        data = self._buf + chunk if self._buf else chunk
        if _SEP not in data:
            if len(data) > MAX_EVENT_BYTES:
                raise GarbageStream("no event separator")
            self._buf = data
            return b""
        head, _, tail = data.rpartition(_SEP)
        self._buf = tail
        out = []
        for event in head.split(_SEP):
            if not event:
                continue
            if self.done:
                raise GarbageStream("data after [DONE]")
            _check(event)
            if event.startswith(DONE):
                self.done = True
                continue  # sent by the caller once the usage event is durable
            if b'"usage"' in event:
                is_usage_only = self._take_usage(event)
                if is_usage_only and not self._client_wants_usage:
                    continue
                if not is_usage_only:
                    self.content_events += 1
            elif event.startswith(b"data:"):
                self.content_events += 1
            out.append(event)
        return _SEP.join(out) + _SEP if out else b""

    def flush(self) -> bytes:
        """Whatever is left when upstream closed without a final separator.

        Raises:
            GarbageStream: the remainder is not an SSE event.
        """
        rest, self._buf = self._buf, b""
        if not rest.strip():
            return b""
        if rest.strip().startswith(DONE):
            self.done = True
            return b""
        _check(rest.strip())
        self.content_events += 1
        return rest + _SEP

    def _take_usage(self, event: bytes) -> bool:
        """Record the usage of an event that mentions it; True when it is the usage-only chunk."""
        payload = event[5:] if event.startswith(b"data:") else event
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError as e:
            raise GarbageStream("SSE data is not JSON") from e
        if not isinstance(obj, dict):
            raise GarbageStream("SSE data is not a JSON object")
        if "usage" in obj and obj["usage"] is not None:
            self.usage = obj["usage"]
            self.usage_seen = True
        return not obj.get("choices")
