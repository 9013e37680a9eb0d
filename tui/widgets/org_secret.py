"""The one and only view of a new API key's secret: copy it now, it is not stored anywhere.

The gateway keeps only a hash, so this modal is the operator's single chance. When it closes it
forgets the secret: its own text, and the app's in-process mirror of the clipboard (the terminal's
clipboard, filled through OSC 52 by Copy, keeps it, as the operator asked).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static


class KeySecretScreen(ModalScreen[None]):
    """Shows `secret` with a Copy button; dismisses (and forgets it) on Done / escape."""

    BINDINGS = [Binding("escape", "done", "Done"), Binding("c", "copy", "Copy")]
    DEFAULT_CSS = """
    KeySecretScreen {
        align: center middle;
    }
    KeySecretScreen #secret-dialog {
        width: 76;
        height: auto;
        border: thick $warning 80%;
        background: $surface;
        padding: 0 1;
    }
    KeySecretScreen #secret-title {
        text-style: bold;
    }
    KeySecretScreen #secret-value {
        margin: 1 0;
        padding: 0 1;
        background: $boost;
        text-style: bold;
    }
    KeySecretScreen #secret-warning {
        color: $warning;
    }
    KeySecretScreen #secret-buttons {
        height: 3;
        margin-top: 1;
        align: right middle;
    }
    KeySecretScreen #secret-buttons Button {
        margin-left: 2;
    }
    """

    def __init__(self, secret: str, description: str) -> None:
        super().__init__()
        self._secret = secret
        self.description = description

    @property
    def secret(self) -> str:
        """The secret while the modal is open; empty once it closed."""
        return self._secret

    def compose(self) -> ComposeResult:
        with Vertical(id="secret-dialog"):
            yield Label(f"New API key: {self.description}", id="secret-title")
            yield Static(self._secret, id="secret-value", markup=False)
            yield Label("⚠ This secret is shown once and is not stored: copy it now. "
                        "It will not be shown again.", id="secret-warning")
            with Horizontal(id="secret-buttons"):
                yield Button("Copy", variant="primary", id="secret-copy")
                yield Button("Done", id="secret-done")

    def on_mount(self) -> None:
        self.query_one("#secret-copy", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "secret-copy":
            self.action_copy()
        else:
            self.action_done()

    def action_copy(self) -> None:
        if self._secret:
            self.app.copy_to_clipboard(self._secret)
            self.notify("API key copied to the clipboard", title="copied")

    def action_done(self) -> None:
        self.forget()
        self.dismiss(None)

    def forget(self, *, view: bool = True) -> None:
        """Drop every copy of the secret this app holds (called on close, whichever way)."""
        if self._secret and getattr(self.app, "_clipboard", "") == self._secret:
            # Textual mirrors the clipboard in-process for its own paste; the terminal keeps its copy.
            self.app._clipboard = ""
        self._secret = ""
        if view:
            self.query_one("#secret-value", Static).update("")

    def on_unmount(self) -> None:
        self.forget(view=False)
