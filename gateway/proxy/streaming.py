"""SSE relay: pass an upstream vLLM stream through event by event, reading usage on the way.

The gateway always asks upstream for the final usage chunk (to settle budgets and bill);
the relay removes that chunk when the client did not ask for it, holds back `[DONE]` until
the usage event is durable, and counts content events so a disconnect can still be billed.
"""

from __future__ import annotations

import orjson

DONE = b"data: [DONE]"
_SEP = b"\n\n"


class SseRelay:
    __slots__ = ("_buf", "_client_wants_usage", "usage", "content_events", "done", "model")

    def __init__(self, *, client_wants_usage: bool) -> None:
        self._buf = b""
        self._client_wants_usage = client_wants_usage
        self.usage: dict | None = None
        self.content_events = 0
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        """Return the bytes to forward now; keeps an incomplete trailing event for later."""
        data = self._buf + chunk if self._buf else chunk
        if _SEP not in data:
            self._buf = data
            return b""
        head, _, tail = data.rpartition(_SEP)
        self._buf = tail
        if b'"usage"' not in head and DONE not in head:
            # Fast path: plain content events.
            self.content_events += head.count(b"data:")
            return head + _SEP
        out = []
        for event in head.split(_SEP):
            if not event:
                continue
            if event.startswith(DONE):
                self.done = True
                continue  # sent by the caller once the usage event is durable
            if b'"usage"' in event:
                usage, is_usage_only = self._usage_of(event)
                if usage is not None:
                    self.usage = usage
                if is_usage_only and not self._client_wants_usage:
                    continue
                if not is_usage_only:
                    self.content_events += 1
            else:
                self.content_events += 1
            out.append(event)
        return _SEP.join(out) + _SEP if out else b""

    def flush(self) -> bytes:
        """Whatever is left when upstream closed without a final separator."""
        rest, self._buf = self._buf, b""
        if rest.strip().startswith(DONE):
            self.done = True
            return b""
        return rest

    @staticmethod
    def _usage_of(event: bytes) -> tuple[dict | None, bool]:
        payload = event[5:] if event.startswith(b"data:") else event
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None, False
        if not isinstance(obj, dict):
            return None, False
        usage = obj.get("usage")
        return (usage if isinstance(usage, dict) else None), not obj.get("choices")
