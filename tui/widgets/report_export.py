"""Export the last result to CSV: a small modal asks for the path; the file is written in a worker with
exactly the CSV code of `opsctl sql --format csv` (exact decimals as text), so both exports agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

if TYPE_CHECKING:
    import pyarrow as pa


class ExportError(Exception):
    """The CSV file could not be written (it exists, or the OS refused); the message says which."""


def write_csv(table: pa.Table, path: Path) -> int:
    """Write `table` as CSV to a new file at `path` (blocking: a worker); the number of rows written.

    Raises:
        ExportError: `path` exists (never overwritten from a TUI prompt) or cannot be written.
    """
    from opsctl.commands.lake import csv_text  # the `opsctl sql --format csv` writer, not a copy

    text = csv_text(table)
    try:
        with open(path, "x", encoding="utf-8", newline="") as out:
            out.write(text)
    except FileExistsError as e:
        raise ExportError(f"{path} already exists: choose another name") from e
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror}") from e
    return table.num_rows


class ExportPathScreen(ModalScreen[Path | None]):
    """Asks where to write the CSV; dismisses with the path (relative to the cwd) or None on escape."""

    DEFAULT_CSS = """
    ExportPathScreen {
        align: center middle;
    }
    ExportPathScreen > Vertical {
        width: 72;
        height: auto;
        padding: 1 2;
        border: thick $primary 80%;
        background: $surface;
    }
    ExportPathScreen Label {
        margin-bottom: 1;
    }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, default: str, what: str) -> None:
        super().__init__()
        self.default = default
        self.what = what

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Export {self.what} to CSV: file path (Enter to write, Esc to cancel)")
            yield Input(self.default, id="export-path")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        text = event.value.strip()
        self.dismiss(Path(text).expanduser() if text else None)

    def action_cancel(self) -> None:
        self.dismiss(None)
