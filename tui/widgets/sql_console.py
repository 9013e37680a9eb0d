"""The SQL console over the usage lake: a highlighted editor, a result table, and a persisted history.

Queries go through `LakeQuery.sql` on this machine's lake, so the console accepts and refuses exactly
what `opsctl sql` does (one read-only SELECT over `usage`). The lake is opened in a worker thread per
query (a LakeQuery is not thread-safe) and closed right after.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widget import Widget
from textual.widgets import OptionList, Static, TextArea
from textual.widgets.option_list import Option

from tui.widgets.report_table import ResultTable, ResultView, result_view

if TYPE_CHECKING:
    import pyarrow as pa

    from tui.app import FleetgateApp

HISTORY_LIMIT = 100
HISTORY_FILE = Path("tui") / "sql_history"
DEFAULT_QUERY = "SELECT org_id, model, count(*) AS requests\nFROM usage\nGROUP BY ALL\nORDER BY requests DESC, org_id, model"


class SqlHistory:
    """The last HISTORY_LIMIT distinct queries, oldest first; persisted 0600 as JSON lines when `path` is set.

    `load` and `save` block (call them from a worker); `add` only changes memory.
    """

    def __init__(self, path: Path | None, *, limit: int = HISTORY_LIMIT) -> None:
        self.path = path
        self.limit = limit
        self.entries: list[str] = []

    def load(self) -> list[str]:
        """Read the file (missing: empty); a line that is not a JSON string is skipped, not fatal."""
        if self.path is None:
            return []
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for line in lines:
            try:
                value = json.loads(line)
            except ValueError:
                continue  # a torn or hand-edited line must not cost the rest of the history
            if isinstance(value, str) and value.strip():
                entries.append(value)
        return entries[-self.limit:]

    def add(self, query: str) -> None:
        """Remember `query` as the newest entry (an earlier identical entry moves up, not repeats)."""
        self.entries = [q for q in self.entries if q != query][-(self.limit - 1):] + [query]

    def save(self, entries: list[str]) -> None:
        """Write `entries` (a snapshot of `self.entries`) to the file, created 0600 in a 0700 directory."""
        if self.path is None:
            return
        from opsctl.state import write_private

        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(self.path, "\n".join(json.dumps(q) for q in entries))


def history_path(source: object) -> Path | None:
    """`<state_dir>/tui/sql_history` of the source's settings (a replay without settings: none)."""
    settings = getattr(source, "settings", None)
    state_dir = getattr(settings, "state_dir", None)
    return Path(state_dir) / HISTORY_FILE if state_dir is not None else None


def _one_line(query: str, width: int = 60) -> str:
    flat = " ".join(query.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


class SqlConsole(Widget):
    """Editor (ctrl+enter / ctrl+r / F5 runs), history (ctrl+up / ctrl+down, or pick from the list), results."""

    DEFAULT_CSS = """
    SqlConsole {
        height: 1fr;
    }
    SqlConsole #sql-top {
        height: 12;
    }
    SqlConsole #sql-editor {
        width: 1fr;
    }
    SqlConsole #sql-history {
        width: 40;
        border-title-align: left;
    }
    SqlConsole #sql-status {
        height: 1;
        padding: 0 1;
    }
    SqlConsole #sql-status.-error {
        color: $text-error;
    }
    """

    BINDINGS = [
        Binding("ctrl+r", "run", "Run"),
        Binding("ctrl+enter,f5", "run", "Run", show=False),
        Binding("ctrl+up", "history(-1)", "Older"),
        Binding("ctrl+down", "history(1)", "Newer"),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.history = SqlHistory(None)
        self.last_result: pa.Table | None = None
        self._cursor = 0  # index into history.entries; == len(entries): the draft being written
        self._draft = ""

    @property
    def fleet_app(self) -> FleetgateApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        with Horizontal(id="sql-top"):
            yield TextArea.code_editor(DEFAULT_QUERY, language="sql", id="sql-editor")
            yield OptionList(id="sql-history")
        yield Static("ctrl+enter, ctrl+r or F5 runs · read-only: one SELECT over the usage view", id="sql-status")
        yield ResultTable(id="sql-results")

    def on_mount(self) -> None:
        self.query_one("#sql-history", OptionList).border_title = "history"
        self.history = SqlHistory(history_path(self.fleet_app.source))
        self._load_history()

    # -- history -------------------------------------------------------------------------------

    @work(thread=True, group="sql-history", exit_on_error=False)
    def _load_history(self) -> None:
        try:
            entries = self.history.load()
        except OSError as e:
            self.app.call_from_thread(self.notify, f"cannot read the SQL history: {e.strerror}", severity="warning")
            return
        self.app.call_from_thread(self._history_loaded, entries)

    def _history_loaded(self, entries: list[str]) -> None:
        self.history.entries = entries + [q for q in self.history.entries if q not in entries]
        self._show_history()

    @work(thread=True, group="sql-history", exit_on_error=False)
    def _save_history(self, entries: list[str]) -> None:
        try:
            self.history.save(entries)
        except OSError as e:
            self.app.call_from_thread(self.notify, f"cannot save the SQL history: {e.strerror}", severity="warning")

    def _show_history(self) -> None:
        entries = self.history.entries
        self._cursor = len(entries)
        listing = self.query_one("#sql-history", OptionList)
        listing.clear_options()
        listing.add_options(Option(_one_line(q), id=str(i)) for i, q in reversed(list(enumerate(entries))))

    def action_history(self, step: int) -> None:
        """Step through the history into the editor (past the newest entry: the draft comes back)."""
        entries = self.history.entries
        target = max(0, min(len(entries), self._cursor + step))
        if target == self._cursor:
            return
        editor = self.query_one("#sql-editor", TextArea)
        if self._cursor == len(entries):
            self._draft = editor.text
        self._cursor = target
        editor.load_text(entries[target] if target < len(entries) else self._draft)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        index = int(event.option.id or 0)
        self._cursor = index
        editor = self.query_one("#sql-editor", TextArea)
        editor.load_text(self.history.entries[index])
        editor.focus()

    # -- running ---------------------------------------------------------------------------

    def action_run(self) -> None:
        query = self.query_one("#sql-editor", TextArea).text.strip()
        if not query:
            self.notify("nothing to run: type a SELECT over the usage view", severity="warning")
            return
        self.history.add(query)
        self._show_history()
        self._save_history(list(self.history.entries))
        self._status("running…")
        self._execute(query)

    @work(thread=True, exclusive=True, group="sql", exit_on_error=False)
    def _execute(self, query: str) -> None:
        """Open the lake, run the guarded query, close; hand the result (or the error) to the event loop."""
        try:
            lake = self.fleet_app.source.lake()
            try:
                table = lake.sql(query)
            finally:
                lake.close()
            view = result_view(table)
        except Exception as e:  # noqa: BLE001 - bad SQL, a refused write, a missing lake: shown, never a crash
            self.app.call_from_thread(self._failed, e)
            return
        self.app.call_from_thread(self._succeeded, table, view)

    def _succeeded(self, table: pa.Table, view: ResultView) -> None:
        self.last_result = table
        self.query_one("#sql-results", ResultTable).show_result(view)
        self._status(view.summary())

    def _failed(self, error: BaseException) -> None:
        reason = self.fleet_app.describe_error(error)
        self._status(reason, error=True)
        self.notify(reason, title="query failed", severity="error")

    def _status(self, text: str, *, error: bool = False) -> None:
        status = self.query_one("#sql-status", Static)
        status.update(Text(text))  # an error may hold [brackets]: never markup
        status.set_class(error, "-error")

    def focus_editor(self) -> Any:
        return self.query_one("#sql-editor", TextArea).focus()


__all__ = ["HISTORY_LIMIT", "SqlConsole", "SqlHistory", "history_path"]
