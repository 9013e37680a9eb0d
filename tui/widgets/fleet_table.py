"""The overview's table: one row per model × environment, updated cell by cell (never rebuilt on a refresh).

Figures come computed from `opsctl.fleet.FleetSampler`; this module only formats them: numbers to short
strings, the req/s history to a sparkline, a row's alert to a colour.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.widgets import DataTable

from opsctl.fleet import FleetRow, FleetTotals, FleetView, sparkline

DASH = "–"
SPARK_WIDTH = 12
ALERT_STYLES = {"down": "bold red", "errors": "bold dark_orange"}
# (key, label, width, right-aligned)
COLUMNS: tuple[tuple[str, str, int, bool], ...] = (
    ("model", "Model", 18, False),
    ("env", "Env", 10, False),
    ("ready", "Ready", 5, True),
    ("rps", "req/s", 6, True),
    ("latency", "p50/p95 ms", 10, True),
    ("ttft", "TTFT p50/95", 11, True),
    ("err", "Err %", 5, True),
    ("queue", "Queue", 5, True),
    ("kv", "KV %", 4, True),
    ("spend", "Spend $", 8, True),
    ("trend", "req/s 5 min", SPARK_WIDTH, False),
)


def fmt_ms(value: float | None) -> str:
    if value is None:
        return DASH
    if value < 10:
        return f"{value:.1f}"
    if value < 10_000:
        return f"{value:.0f}"
    return f"{value / 1000:.0f}s"


def fmt_rate(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def fmt_pct(fraction: float | None, digits: int = 1) -> str:
    return DASH if fraction is None else f"{fraction * 100:.{digits}f}"


def fmt_count(value: float | None) -> str:
    return DASH if value is None else f"{value:.0f}"


def fmt_usd(value: float | None) -> str:
    if value is None:
        return DASH
    if 0 < value < 0.0001:
        return "<0.0001"  # more than nothing, all the same
    if value < 0.01:
        return f"{value:.4f}"  # a test fleet's fractions of a cent
    return f"{value:.2f}" if value < 10_000 else f"{value:,.0f}"


def row_cells(row: FleetRow, now: float, span_s: float) -> tuple[str, ...]:
    """The row's cells as text, in COLUMNS order."""
    return (
        row.model, row.environment, f"{row.ready}/{row.total}", fmt_rate(row.req_s),
        f"{fmt_ms(row.p50_ms)}/{fmt_ms(row.p95_ms)}", f"{fmt_ms(row.ttft_p50_ms)}/{fmt_ms(row.ttft_p95_ms)}",
        fmt_pct(row.error_rate), fmt_count(row.queue), fmt_pct(row.kv_max, 0), fmt_usd(row.spend_usd),
        sparkline(row.history, now=now, span_s=span_s, width=SPARK_WIDTH),
    )


def totals_text(totals: FleetTotals, window_s: float | None) -> str:
    """The line under the table: the fleet's sums, and how many rows need a look."""
    window = f" over {window_s:.0f} s" if window_s else ""
    alerts = f" · [b red]{totals.alerts} need attention[/]" if totals.alerts else ""
    return (f"{totals.rows} model·env · endpoints {totals.ready}/{totals.total} ready · "
            f"{fmt_rate(totals.req_s)} req/s{window} · errors {fmt_pct(totals.error_rate)} % · "
            f"spend today $ {fmt_usd(totals.spend_usd)}{alerts}")


class FleetTable(DataTable):
    """Rows keyed `model@environment`; a refresh rewrites only the cells whose text or colour changed."""

    DEFAULT_CSS: ClassVar[str] = """
    FleetTable {
        height: 1fr;
    }
    """

    def __init__(self, *, span_s: float, id: str | None = None) -> None:  # noqa: A002 - Textual's name
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.span_s = span_s
        self._shown: dict[str, tuple[tuple[str, ...], str]] = {}  # row key → (cells, alert)

    def on_mount(self) -> None:
        for key, label, width, right in COLUMNS:
            self.add_column(Text(label, justify="right" if right else "left"), width=width, key=key)

    def update_view(self, view: FleetView) -> None:
        """Show `view`: cells in place when the same rows are there, one rebuild when rows came or went."""
        rows = {row.key: row for row in view.rows}
        if list(rows) != list(self._shown):
            self._rebuild(view)
            return
        for key, row in rows.items():
            cells, alert = row_cells(row, view.at, self.span_s), row.alert
            old_cells, old_alert = self._shown[key]
            for index, (column, text) in enumerate(zip(COLUMNS, cells, strict=True)):
                if text != old_cells[index] or alert != old_alert:
                    self.update_cell(key, column[0], self._cell(text, column[3], alert))
            self._shown[key] = (cells, alert)

    def _rebuild(self, view: FleetView) -> None:
        cursor = self.cursor_row
        self.clear()
        self._shown = {}
        for row in view.rows:
            cells = row_cells(row, view.at, self.span_s)
            self.add_row(*(self._cell(text, column[3], row.alert) for column, text in zip(COLUMNS, cells, strict=True)),
                         key=row.key)
            self._shown[row.key] = (cells, row.alert)
        if view.rows:
            self.move_cursor(row=min(cursor, len(view.rows) - 1))

    @staticmethod
    def _cell(text: str, right: bool, alert: str) -> Text:
        return Text(text, style=ALERT_STYLES.get(alert, ""), justify="right" if right else "left", no_wrap=True)
