"""The freshness line every live screen shows: when its data was last read, or that it is stale."""

from __future__ import annotations

from datetime import datetime

from textual.reactive import reactive
from textual.widgets import Static


class Freshness(Static):
    """`● live · refreshed 12:00:03`, `▶ replay · recorded 12:00:03` or, after a failed refresh,
    `STALE last good refresh 12:00:03 · why`."""

    last_good: reactive[datetime | None] = reactive(None)
    error: reactive[str] = reactive("")

    def render(self) -> str:
        when = self.last_good.strftime("%H:%M:%S") if self.last_good else "never"
        if self.error:
            return f"[b reverse red] STALE [/] last good refresh {when} · {self.error}"
        if self.last_good is None:
            return "[dim]loading…[/]"
        if not getattr(getattr(self.app, "source", None), "live", True):
            return f"[b]▶ replay[/] · recorded {when}"
        return f"[green]●[/] live · refreshed {when}"

    def watch_error(self, error: str) -> None:
        self.set_class(bool(error), "-stale")

    def good(self, at: datetime) -> None:
        self.last_good = at
        self.error = ""

    def failed(self, reason: str) -> None:
        self.error = reason or "refresh failed"
