"""Overview screen: the whole fleet at a glance, per model × environment, refreshed every ~2 s.

One `GET /admin/v1/fleet` per refresh whatever the fleet's size (plus today's spend every ~30 s, since that
one runs DuckDB in the gateway); `opsctl.fleet.FleetSampler` turns successive answers into rates, quantiles
and history in the worker thread, and the table updates only the cells that changed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.widgets import DataTable, Footer, Header, Static

from gateway.errors import FleetgateError
from opsctl.fleet import HISTORY_S, FleetSampler, FleetView, spend_since
from tui.messages import FleetEvent
from tui.screens.base import FleetScreen, PaletteAction
from tui.widgets.fleet_table import FleetTable, totals_text
from tui.widgets.status import Freshness

FLEET_PATH = "/admin/v1/fleet"
SPEND_PATH = "/admin/v1/usage/spend"


class OverviewScreen(FleetScreen):
    """Endpoints ready/total, req/s, latency, TTFT, errors, queue, KV cache, spend today, a req/s sparkline."""

    TITLE = "Overview"
    DEFAULT_CSS: ClassVar[str] = """
    OverviewScreen #fleet-totals {
        height: 1;
        padding: 0 1;
        background: $boost;
    }
    """
    def __init__(self) -> None:
        super().__init__()
        self.sampler = FleetSampler()
        self._spend_error: str | None = None
        self._spend_error_shown = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Freshness()
        yield FleetTable(span_s=HISTORY_S, id="fleet")
        yield Static("", id="fleet-totals")
        yield Footer()

    # -- data (worker thread) --------------------------------------------------------------------

    def fetch(self) -> FleetView:
        """The fleet answer, fed to the sampler; today's spend when it is due (a failure there is not fatal)."""
        answer = self.source.get(FLEET_PATH)
        self._read_spend()
        return self.sampler.feed(answer)

    def _read_spend(self) -> None:
        now = time.monotonic()
        if not self.sampler.spend_due(now):
            return
        try:
            report = self.source.get(SPEND_PATH, by="model,environment", since=spend_since(self.source.now()))
        except FleetgateError as e:
            self.sampler.spend_failed(now)
            self._spend_error = self.fleet_app.describe_error(e)
            return
        self.sampler.set_spend(report if isinstance(report, list) else [], now)
        self._spend_error = None

    # -- rendering (event loop) ------------------------------------------------------------------

    def show(self, data: Any) -> None:
        view: FleetView = data
        self.query_one(FleetTable).update_view(view)
        # one line of fixed height: no layout pass (that would re-render the whole screen every refresh)
        self.query_one("#fleet-totals", Static).update(totals_text(view.totals, view.window_s), layout=False)
        self._report_spend_error()

    def _report_spend_error(self) -> None:
        """Once per failure streak: the spend column keeps its last figures meanwhile."""
        if self._spend_error is None:
            self._spend_error_shown = False
        elif not self._spend_error_shown:
            self._spend_error_shown = True
            self.notify(self._spend_error, title="today's spend could not be read", severity="warning")

    def on_fleet_event(self, event: FleetEvent) -> None:
        """A registry change (endpoint enabled, disabled, drained …) shows now, not at the next tick."""
        if event.type == "registry" and self.is_current:
            self.refresh_data()

    # -- actions ---------------------------------------------------------------------------------

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_registry()

    def action_open_registry(self) -> None:
        """Jump to the registry screen (its filter is the registry screen's own)."""
        table = self.query_one(FleetTable)
        if table.row_count:
            self.app.switch_mode("registry")

    def palette_actions(self) -> Iterable[PaletteAction]:
        return (PaletteAction("Overview: refresh now", "Read the fleet figures again", self.refresh_data),)
