"""Admin API: live events as Server-Sent Events (`GET /admin/v1/events`) for the TUI and `opsctl` watchers.

Each client gets its own hub subscription; the stream ends when the client goes away or the
gateway stops. `publish_live` is how admin handlers send an event to every replica's clients.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway import appkeys
from gateway.admin.inputs import query_str, shown
from gateway.errors import InvalidRequest
from gateway.events import BUS_EVENT, EVENT_TYPES, Event

# A comment line this often keeps proxies and idle timeouts from closing a quiet stream.
KEEPALIVE_S = 15.0
_KEEPALIVE = b": keepalive\n\n"


async def publish_live(request: web.Request, type_: str, data: dict[str, Any]) -> None:
    """Send a live event to the SSE clients of every gateway replica (through the change bus)."""
    await request.app[appkeys.BUS].publish(BUS_EVENT, {"type": type_, "data": data})


def _types(request: web.Request) -> tuple[str, ...]:
    raw = query_str(request, "types")
    if raw is None:
        return EVENT_TYPES
    names = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in EVENT_TYPES]
    if unknown or not names:
        raise InvalidRequest(f"'types' must be a comma-separated list of {', '.join(EVENT_TYPES)}; "
                             f"got {shown(raw)!r}.", param="types")
    return tuple(names)


def encode(event: Event) -> bytes:
    """`id: n`, `event: type`, `data: json` and a blank line (no id line for `lagged`)."""
    head = b"" if event.id is None else b"id: %d\n" % event.id
    return head + b"event: " + event.type.encode() + b"\ndata: " + orjson.dumps(event.data) + b"\n\n"


async def stream_events(request: web.Request) -> web.StreamResponse:
    """Live rollout, registry and health events (Server-Sent Events); `?types=` picks some."""
    types = _types(request)
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
        "X-Request-ID": request[appkeys.REQUEST_ID],
    })
    with request.app[appkeys.EVENTS].subscribe(types) as subscription:
        await response.prepare(request)
        try:
            # A first comment flushes the headers, so a client knows it is subscribed before any event.
            await response.write(b": subscribed to " + ",".join(types).encode() + b"\n\n")
            while True:
                try:
                    event = await subscription.next_event(timeout=KEEPALIVE_S)
                except StopAsyncIteration:  # the gateway is shutting down
                    break
                await response.write(_KEEPALIVE if event is None else encode(event))
        except ConnectionResetError:  # the client went away between two events
            return response
    return response


def setup(app: web.Application) -> None:
    app.router.add_get("/admin/v1/events", stream_events)
