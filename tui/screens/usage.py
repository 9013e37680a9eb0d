"""Usage screen: canned reports (spend / latency / errors over a date range) and a SQL console over the lake.

Both read this machine's usage lake through `analytics_lake` (like `opsctl usage report` and
`opsctl sql`), in thread workers; nothing is computed here. The screen loads once per visit and on
`r` (REFRESH False): a report is a question the operator asks, not a live gauge.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Header, Static, TabbedContent, TabPane

from analytics_lake.report_args import ReportArgumentError
from tui.screens.base import FleetScreen, PaletteAction
from tui.widgets.report_export import ExportError, ExportPathScreen, write_csv
from tui.widgets.report_form import ReportForm, ReportRequest
from tui.widgets.report_table import ResultTable, ResultView, result_view
from tui.widgets.sql_console import SqlConsole
from tui.widgets.status import Freshness

if TYPE_CHECKING:
    from collections.abc import Iterable

    import pyarrow as pa


class UsageScreen(FleetScreen):
    """Tabs: Reports (form + table) and SQL (console). ctrl+s / x exports the active tab's last result."""

    TITLE = "Usage"
    REFRESH: ClassVar[bool] = False

    DEFAULT_CSS = """
    UsageScreen #report-status {
        height: 1;
        padding: 0 1;
    }
    UsageScreen TabbedContent, UsageScreen TabPane {
        height: 1fr;
    }
    """

    BINDINGS = [
        Binding("ctrl+s", "export", "Export CSV"),
        Binding("x", "export", "Export CSV", show=False),
        Binding("ctrl+t", "toggle_tab", "Reports/SQL"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._request: ReportRequest | None = None
        self.report_result: pa.Table | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Freshness()
        with TabbedContent(initial="reports"):
            with TabPane("Reports", id="reports"):
                yield ReportForm(self.source.now, id="report-form")
                yield Static("", id="report-status")
                yield ResultTable(id="report-results")
            with TabPane("SQL", id="sql"):
                yield SqlConsole(id="sql-console")
        yield Footer()

    # -- reports (the base class's fetch/show: `r` and the first visit run the current report) ----

    def refresh_data(self) -> None:
        """Validate the form on the event loop, then run the report in the refresh worker."""
        form = self.query_one(ReportForm)
        try:
            request = form.request()
        except ReportArgumentError as e:
            form.show_error(str(e), e.argument)
            self.notify(str(e), title="report not run", severity="warning")
            return
        form.show_error("")
        if request == self._request and self._report_running():
            return  # the same question is being answered (e.g. the first mount's run and its resume)
        self._request = request
        self._status(f"running {self._request.title()}…")
        super().refresh_data()

    def _report_running(self) -> bool:
        return any(w.node is self and w.group == "refresh" and not w.is_finished for w in self.workers)

    def fetch(self) -> tuple[ReportRequest, pa.Table, ResultView]:
        request = self._request
        if request is None:
            raise ReportArgumentError("report", "no report chosen")
        lake = self.source.lake()
        try:
            table = request.run(lake)
        finally:
            lake.close()
        return request, table, result_view(table)

    def show(self, data: tuple[ReportRequest, pa.Table, ResultView]) -> None:
        request, table, view = data
        self.report_result = table
        self.query_one("#report-results", ResultTable).show_result(view)
        self._status(f"{request.title()} · {view.summary()}")

    def _refresh_failed(self, error: BaseException) -> None:
        """A failed report also says why on its status line (the base class notifies once per streak)."""
        super()._refresh_failed(error)
        self._status(f"failed: {self.fleet_app.describe_error(error)}")

    def _status(self, text: str) -> None:
        from rich.text import Text

        self.query_one("#report-status", Static).update(Text(text))

    def on_report_form_submitted(self, event: ReportForm.Submitted) -> None:
        event.stop()
        self.refresh_data()

    # -- tabs, export --------------------------------------------------------------------------

    def action_toggle_tab(self) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = "sql" if tabs.active == "reports" else "reports"
        if tabs.active == "sql":
            self.query_one(SqlConsole).focus_editor()

    def _active_result(self) -> tuple[pa.Table | None, str]:
        if self.query_one(TabbedContent).active == "sql":
            return self.query_one(SqlConsole).last_result, "query"
        kind = self._request.kind if self._request else "report"
        return self.report_result, kind

    def action_export(self) -> None:
        """Ask for a path (default: a new file in the cwd), then write the last result there."""
        table, what = self._active_result()
        if table is None:
            self.notify("nothing to export yet: run a report or a query first", severity="warning")
            return
        default = f"fleetgate-{what}-{self.source.now():%Y%m%d-%H%M%S}.csv"

        def chosen(path: Path | None) -> None:
            if path is not None:
                self._export(table, path)

        self.app.push_screen(ExportPathScreen(default, f"the last {what} result ({table.num_rows:,} rows)"), chosen)

    @work(thread=True, group="export", exit_on_error=False)
    def _export(self, table: pa.Table, path: Path) -> None:
        try:
            rows = write_csv(table, path)
        except ExportError as e:
            self.app.call_from_thread(self.notify, str(e), title="export failed", severity="error")
            return
        self.app.call_from_thread(self.notify, f"wrote {rows:,} rows to {path.resolve()}", title="exported")

    def palette_actions(self) -> Iterable[PaletteAction]:
        return (
            PaletteAction("Usage: run the report", "Run the canned report with the form's settings", self.refresh_data),
            PaletteAction("Usage: run the SQL query", "Run the SQL console's query (read-only)",
                          lambda: self.query_one(SqlConsole).action_run()),
            PaletteAction("Usage: export to CSV", "Write the active tab's last result to a CSV file",
                          self.action_export),
            PaletteAction("Usage: Reports / SQL", "Switch between the reports and the SQL console",
                          self.action_toggle_tab),
        )
