"""Messages the TUI's parts send each other (dataclasses, as Textual's examples and Toolong do)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textual.message import Message


@dataclass
class FleetEvent(Message):
    """One live event from `/admin/v1/events` (rollout, registry, health), delivered to every screen."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class EventsConnection(Message):
    """The live event stream connected (True) or was lost (False, with the reason)."""

    connected: bool
    reason: str = ""
