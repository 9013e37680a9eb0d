"""Refresh a DataTable in place: a periodic refresh must not reset the operator's cursor.

When the rows are the same (the usual refresh) only changed cells are rewritten; when rows come or
go the table is rebuilt and the cursor returns to the row it was on (by key), if it still exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textual import events
from textual.widgets import DataTable

Row = tuple[str, Sequence[Any]]


class SyncedTable(DataTable):
    """A DataTable that redraws its rows when new rows widen its columns.

    DataTable measures column widths when it goes idle, but keeps row renders cached from before
    under the same key: a frame drawn between `add_row` and idle stays truncated until something
    else invalidates it. Dropping the caches once widths changed fixes that.
    """

    async def _on_idle(self, event: events.Idle) -> None:
        before = [column.content_width for column in self.columns.values()]
        await super()._on_idle(event)
        if [column.content_width for column in self.columns.values()] != before:
            self.notify_style_update()


def cursor_key(table: DataTable) -> str | None:
    """The key of the row under the cursor, or None on an empty table."""
    if table.row_count == 0:
        return None
    row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
    return row_key.value


def sync_rows(table: DataTable, rows: Sequence[Row], *, keep: str | None = None) -> None:
    """Make `table` show `rows` (key, cells in column order); keep the cursor on `keep` (or where it was)."""
    keep = keep if keep is not None else cursor_key(table)
    current = [key.value for key in table.rows]
    if current == [key for key, _ in rows]:
        columns = list(table.columns)
        for key, cells in rows:
            old = table.get_row(key)
            for column, value, before in zip(columns, cells, old, strict=False):
                if value != before:
                    table.update_cell(key, column, value, update_width=True)
        table.check_idle()
        return
    table.clear()
    for key, cells in rows:
        table.add_row(*cells, key=key)
    if keep is not None and keep in {key for key, _ in rows}:
        table.move_cursor(row=table.get_row_index(keep), animate=False)
    # Column widths are measured when the table next goes idle: make sure it does, even if no
    # other message reaches it (otherwise new rows can stay drawn at the old widths).
    table.check_idle()
