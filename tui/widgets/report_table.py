"""A query result (an Arrow table from the lake) shown in a DataTable, capped so a huge result stays responsive.

`result_view` runs in a worker thread (it walks the rows); `ResultTable.show_result` only fills the widget.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.widgets import DataTable

if TYPE_CHECKING:
    import pyarrow as pa

#: At most this many rows are put in the table; the status line says when a result had more.
MAX_SHOWN_ROWS = 1_000


@dataclass(frozen=True)
class ResultView:
    """What the table shows: column names, up to MAX_SHOWN_ROWS rendered rows, and the full row count."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Text, ...], ...]
    total_rows: int

    @property
    def truncated(self) -> bool:
        return self.total_rows > len(self.rows)

    def summary(self) -> str:
        """`3 rows` or `12,345 rows · showing the first 1,000 (export to CSV for all)`."""
        noun = "row" if self.total_rows == 1 else "rows"
        text = f"{self.total_rows:,} {noun}"
        if self.truncated:
            text += f" · showing the first {len(self.rows):,} (export to CSV for all)"
        return text


def _cell(value: Any) -> Text:
    """One value as text: numbers right-aligned, exact decimals as written, NULL dimmed."""
    if value is None:
        return Text("NULL", style="dim")
    if isinstance(value, bool):
        return Text(str(value).lower())
    if isinstance(value, int):
        return Text(f"{value:,}", justify="right")
    if isinstance(value, Decimal):
        return Text(str(value), justify="right")
    if isinstance(value, float):
        return Text(f"{value:,.3f}", justify="right")
    if isinstance(value, datetime):
        return Text(value.isoformat(sep=" ", timespec="seconds"))
    if isinstance(value, date):
        return Text(value.isoformat())
    return Text(str(value))


def result_view(table: pa.Table, *, cap: int = MAX_SHOWN_ROWS) -> ResultView:
    """Render the first `cap` rows of `table` (blocking: call it from a worker)."""
    shown = table.slice(0, cap).to_pylist()
    names = tuple(table.column_names)
    rows = tuple(tuple(_cell(row[name]) for name in names) for row in shown)
    return ResultView(names, rows, table.num_rows)


class ResultTable(DataTable):
    """A read-only grid of a result; rows are selected whole, for easy reading across."""

    DEFAULT_CSS = """
    ResultTable {
        height: 1fr;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)

    def show_result(self, view: ResultView) -> None:
        self.clear(columns=True)
        # DataTable keys columns by label: de-duplicate names like `count(*)` appearing twice
        seen: dict[str, int] = {}
        for name in view.columns:
            seen[name] = seen.get(name, 0) + 1
            self.add_column(name, key=name if seen[name] == 1 else f"{name}#{seen[name]}")
        self.add_rows(view.rows)
