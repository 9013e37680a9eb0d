"""The canned-report form: which report (spend / latency / errors), grouped by what, over which date range.

It only validates and describes the request (with the lake layer's own argument parsers, so the
TUI accepts exactly what `opsctl usage report` does); the screen runs it in a worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Button, Input, Select, Static

from analytics_lake.report_args import REPORT_BY, check_range, parse_since, parse_until

if TYPE_CHECKING:
    import pyarrow as pa

    from analytics_lake.query import LakeQuery

#: The presets' `since` values; "today" becomes the date of the source's clock.
PRESETS: tuple[str, ...] = ("today", "7d", "30d")


@dataclass(frozen=True)
class ReportRequest:
    """One validated report: run it with `run(lake)` in a worker thread."""

    kind: str
    by: str
    since: datetime | None
    until: datetime | None

    def run(self, lake: LakeQuery) -> pa.Table:
        report = {"spend": lake.spend, "latency": lake.latency, "errors": lake.errors}[self.kind]
        return report(by=self.by, since=self.since, until=self.until)

    def title(self) -> str:
        """`spend by org · since 2026-01-01 00:00 · until now` (for the status line and the CSV name)."""
        since = self.since.strftime("%Y-%m-%d %H:%M") if self.since else "the beginning"
        until = self.until.strftime("%Y-%m-%d %H:%M") if self.until else "now"
        return f"{self.kind} by {self.by} · {since} → {until} (UTC)"


class ReportForm(Widget):
    """Kind, group-by, since/until inputs with presets, and Run; posts `Submitted` to run a report."""

    DEFAULT_CSS = """
    ReportForm {
        height: auto;
    }
    ReportForm Horizontal {
        height: auto;
    }
    ReportForm #report-kind {
        width: 16;
    }
    ReportForm #report-by {
        width: 20;
    }
    ReportForm Input {
        width: 24;
    }
    ReportForm Button {
        min-width: 9;
        width: auto;
    }
    ReportForm #report-error {
        height: auto;
        padding: 0 1;
        color: $text-error;
    }
    """

    DEFAULT_KIND: ClassVar[str] = "spend"

    class Submitted(Message):
        """The operator asked to run the report (Run, Enter in a date, a preset, a new kind or grouping)."""

    def __init__(self, clock: Callable[[], datetime], *, id: str | None = None) -> None:
        """`clock` is the source's: relative ranges and "today" follow a replay's time, not the wall's."""
        super().__init__(id=id)
        self.clock = clock
        self._chosen: dict[str, object] = {"report-kind": self.DEFAULT_KIND,
                                           "report-by": REPORT_BY[self.DEFAULT_KIND][0]}

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Select([(k, k) for k in REPORT_BY], value=self.DEFAULT_KIND, allow_blank=False, id="report-kind")
            yield Select(self._by_options(self.DEFAULT_KIND), value=REPORT_BY[self.DEFAULT_KIND][0],
                         allow_blank=False, id="report-by")
            yield Input("7d", placeholder="since: 7d, 24h, 2026-01-31", id="report-since")
            yield Input("", placeholder="empty = now", id="report-until")
            for preset in PRESETS:
                yield Button(preset, id=f"preset-{preset}", classes="preset")
            yield Button("Run", variant="primary", id="report-run")
        yield Static("", id="report-error")

    def on_mount(self) -> None:
        self.query_one("#report-since", Input).border_title = "since"
        self.query_one("#report-until", Input).border_title = "until"

    @staticmethod
    def _by_options(kind: str) -> list[tuple[str, str]]:
        return [(f"by {name}", name) for name in REPORT_BY[kind]]

    # -- the request ---------------------------------------------------------------------------

    def request(self) -> ReportRequest:
        """The form's report, relative dates taken from the source's clock.

        Raises:
            ReportArgumentError: a bad since/until or an empty range (shown inline by `show_error`).
        """
        now = self.clock()
        kind = str(self.query_one("#report-kind", Select).value)
        by = str(self.query_one("#report-by", Select).value)
        since_text = self.query_one("#report-since", Input).value.strip()
        until_text = self.query_one("#report-until", Input).value.strip()
        since = parse_since(since_text, now) if since_text else None
        until = parse_until(until_text, now) if until_text else None
        check_range(since, until)
        return ReportRequest(kind, by, since, until)

    def show_error(self, message: str, argument: str | None = None) -> None:
        """An inline error under the form (empty: none); `argument` (since/until) marks that input."""
        self.query_one("#report-error", Static).update(Text(message))  # never markup
        for name in ("since", "until"):
            self.query_one(f"#report-{name}", Input).set_class(argument == name, "-invalid")

    # -- events -----------------------------------------------------------------------------

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if self._chosen.get(str(event.select.id)) == event.value:
            return  # a Select announces its initial value on mount: that is not a new question
        self._chosen[str(event.select.id)] = event.value
        if event.select.id == "report-kind":
            by = self.query_one("#report-by", Select)
            current = by.value
            options = REPORT_BY[str(event.value)]
            with by.prevent(Select.Changed):
                by.set_options(self._by_options(str(event.value)))
                by.value = current if current in options else options[0]
            self._chosen["report-by"] = by.value
        self.post_message(self.Submitted())

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(self.Submitted())

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.has_class("preset"):
            self.apply_preset(str(event.button.label))
        self.post_message(self.Submitted())

    def apply_preset(self, preset: str) -> None:
        """Set the range to a preset: `today` (the source clock's date), `7d` or `30d`; until = now."""
        since = self.clock().date().isoformat() if preset == "today" else preset
        self.query_one("#report-since", Input).value = since
        self.query_one("#report-until", Input).value = ""
