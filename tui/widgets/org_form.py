"""A small modal form for the Orgs screen (new org, new key, set budget) with inline errors.

The form parses what it can (numbers, required fields) before sending, then sends the request
itself in a thread worker: a 400 from the gateway is shown under the field it names and the form
stays open, so a typo costs one edit, not a retyped form. It dismisses with the gateway's answer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

# The gateway's 400s start with the field they are about: "'name' must be 1-64 characters …".
_PARAM_IN_MESSAGE = re.compile(r"^'([a-z_]+)'")
INT32_MAX = 2**31 - 1


class FieldError(ValueError):
    """A value the form refuses before sending (its message is shown under the field)."""


@dataclass(frozen=True)
class FormField:
    """One input of a form; `name` is the request body's field.

    kind: `text`, `positive_int` (1…2³¹-1), `percent` (0…100), `usd` (≥ 0), `list` (comma-separated)
    or `choice` (a Select over `choices`, (label, value) pairs).
    """

    name: str
    label: str
    kind: str = "text"
    required: bool = False
    default: str = ""
    placeholder: str = ""
    choices: tuple[tuple[str, str], ...] = ()


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError as e:
        raise FieldError("must be a whole number") from e
    if not 1 <= value <= INT32_MAX:
        raise FieldError(f"must be between 1 and {INT32_MAX}")
    return value


def _percent(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError as e:
        raise FieldError("must be a whole number of percent") from e
    if not 0 <= value <= 100:
        raise FieldError("must be between 0 and 100")
    return value


def _usd(raw: str) -> float:
    try:
        value = float(raw.removeprefix("$").replace(",", ""))
    except ValueError as e:
        raise FieldError("must be an amount in USD, e.g. 25 or 0.50") from e
    if not math.isfinite(value) or value < 0:
        raise FieldError("must be a finite amount ≥ 0")
    return value


def _list(raw: str) -> list[str]:
    items = [item.strip() for item in raw.split(",") if item.strip()]
    if not items:
        raise FieldError("must name at least one, comma-separated")
    return items


PARSERS: dict[str, Callable[[str], Any]] = {
    "text": str, "choice": str, "positive_int": _positive_int, "percent": _percent, "usd": _usd, "list": _list,
}


def parse_value(spec: FormField, raw: str) -> Any:
    """The body value for `raw` (None when left empty and optional). Raises FieldError."""
    raw = raw.strip()
    if not raw:
        if spec.required:
            raise FieldError("is required")
        return None
    return PARSERS[spec.kind](raw)


class OrgFormScreen(ModalScreen[Any]):
    """Dismisses with `submit(body)`'s answer, or None on Cancel/escape.

    Args:
        title: the form's heading (names what is created or changed).
        fields: the inputs, in order.
        submit: the blocking request (runs in a worker thread); raise FleetgateError to refuse.
        fixed: body fields the operator does not edit here (e.g. the selected org).
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    OrgFormScreen {
        align: center middle;
    }
    OrgFormScreen #form-dialog {
        width: 72;
        height: auto;
        max-height: 90%;
        border: thick $primary 80%;
        background: $surface;
        padding: 0 1;
    }
    OrgFormScreen #form-title {
        text-style: bold;
        padding: 0 0 1 0;
    }
    OrgFormScreen .field-error, OrgFormScreen #form-error {
        color: $error;
        height: auto;
    }
    OrgFormScreen .field-error {
        display: none;
    }
    OrgFormScreen .field-error.-shown {
        display: block;
    }
    OrgFormScreen #form-buttons {
        height: 3;
        margin-top: 1;
        align: right middle;
    }
    OrgFormScreen #form-buttons Button {
        margin-left: 2;
    }
    """

    def __init__(self, title: str, fields: Sequence[FormField], submit: Callable[[dict[str, Any]], Any],
                 *, fixed: dict[str, Any] | None = None, submit_label: str = "Create") -> None:
        super().__init__()
        self.form_title = title
        self.fields = tuple(fields)
        self.submit = submit
        self.fixed = dict(fixed or {})
        self.submit_label = submit_label

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="form-dialog"):
            yield Label(self.form_title, id="form-title")
            for spec in self.fields:
                yield Label(spec.label + (" *" if spec.required else ""))
                if spec.kind == "choice":
                    yield Select(spec.choices, value=spec.default or spec.choices[0][1], allow_blank=False,
                                 id=f"field-{spec.name}")
                else:
                    yield Input(spec.default, placeholder=spec.placeholder, id=f"field-{spec.name}")
                yield Static("", id=f"error-{spec.name}", classes="field-error")
            yield Static("", id="form-error")
            with Horizontal(id="form-buttons"):
                yield Button("Cancel", id="form-cancel")
                yield Button(self.submit_label, variant="primary", id="form-submit")

    # -- reading ------------------------------------------------------------------------------

    def raw(self, name: str) -> str:
        """What the operator entered in field `name`."""
        widget = self.query_one(f"#field-{name}")
        if isinstance(widget, Select):
            return "" if widget.value is Select.NULL else str(widget.value)
        assert isinstance(widget, Input)
        return widget.value

    def error_text(self, name: str | None = None) -> str:
        """The inline error under field `name` (or the form's general one)."""
        widget = self.query_one(f"#error-{name}" if name else "#form-error", Static)
        return str(widget.content)

    def _set_error(self, name: str | None, message: str) -> None:
        widget = self.query_one(f"#error-{name}" if name else "#form-error", Static)
        widget.update(message)
        widget.set_class(bool(message), "-shown")

    def _clear_errors(self) -> None:
        for spec in self.fields:
            self._set_error(spec.name, "")
        self._set_error(None, "")

    def parse(self) -> dict[str, Any] | None:
        """The request body, or None after showing every field's error inline."""
        self._clear_errors()
        body = dict(self.fixed)
        ok = True
        for spec in self.fields:
            try:
                body[spec.name] = parse_value(spec, self.raw(spec.name))
            except FieldError as e:
                self._set_error(spec.name, f"{spec.label} {e}")
                ok = False
        return body if ok else None

    # -- sending ------------------------------------------------------------------------------

    @on(Button.Pressed, "#form-submit")
    @on(Input.Submitted)
    def action_submit(self) -> None:
        body = self.parse()
        if body is None:
            return
        self.query_one("#form-submit", Button).disabled = True
        self._set_error(None, "sending…")
        self._send({k: v for k, v in body.items() if v is not None})

    @on(Button.Pressed, "#form-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)

    @work(thread=True, exclusive=True, group="form")
    def _send(self, body: dict[str, Any]) -> None:
        try:
            answer = self.submit(body)
        except Exception as e:  # noqa: BLE001 - every refusal is shown in the form, never a crash
            self.app.call_from_thread(self._refused, e)
            return
        # Handed over directly (not as the worker's result), so no worker object keeps the answer.
        self.app.call_from_thread(self.dismiss, answer)

    def _refused(self, error: BaseException) -> None:
        """Show the gateway's refusal inline: under the field it names if it names one of ours."""
        self.query_one("#form-submit", Button).disabled = False
        message = str(error)
        match = _PARAM_IN_MESSAGE.match(message)
        names = {spec.name for spec in self.fields}
        param = getattr(error, "param", None) or (match.group(1) if match else None)
        self._set_error(None, "")
        if param in names:
            self._set_error(param, message)
        else:
            describe = getattr(self.app, "describe_error", str)
            self._set_error(None, describe(error))
            if getattr(error, "status", 400) != 400:
                self.notify(describe(error), title=f"{self.form_title} failed", severity="error")
