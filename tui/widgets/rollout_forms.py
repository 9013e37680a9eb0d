"""Forms of the rollouts screen: start a rollout, promote a release, roll a model back.

Each form checks its input in a thread worker before it closes (the field rules and the playbook load of
opsctl/rollout/launch.py, then the gateway: the model exists, no other rollout is active), shows what is wrong
inline, and dismisses with the `opsctl` arguments to launch. A bad value never starts anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Static

from gateway.errors import FleetgateError

if TYPE_CHECKING:
    from tui.source import Source

# (id, label, placeholder)
Field = tuple[str, str, str]


class RolloutForm(ModalScreen[list[str] | None]):
    """A form over a few inputs; dismisses with the checked `opsctl` argv, or None when cancelled."""

    TITLE_TEXT: ClassVar[str] = ""
    SUBMIT_LABEL: ClassVar[str] = "Start"
    FIELDS: ClassVar[tuple[Field, ...]] = ()
    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    RolloutForm {
        align: center middle;
    }
    RolloutForm #form {
        width: 90;
        height: auto;
        max-height: 90%;
        border: thick $primary 80%;
        background: $surface;
        padding: 0 1;
    }
    RolloutForm #form-title {
        text-style: bold;
        padding: 0 0 1 0;
    }
    RolloutForm .form-row {
        height: 3;
    }
    RolloutForm .form-row Label {
        width: 20;
        padding: 1 1 0 0;
    }
    RolloutForm .form-row Input {
        width: 1fr;
    }
    RolloutForm Checkbox {
        margin-left: 20;
    }
    RolloutForm #form-error {
        color: $error;
        text-style: bold;
        height: auto;
        padding: 1 0 0 0;
    }
    RolloutForm #form-buttons {
        height: 3;
        margin-top: 1;
        align-horizontal: right;
    }
    RolloutForm #form-buttons Button {
        margin-left: 2;
    }
    """

    def __init__(self, source: Source, values: dict[str, str] | None = None) -> None:
        super().__init__()
        self.source = source
        self.values = values or {}

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="form"):
            yield Static(self.TITLE_TEXT, id="form-title")
            for field_id, label, placeholder in self.FIELDS:
                with Horizontal(classes="form-row"):
                    yield Label(label)
                    yield Input(self.values.get(field_id, ""), placeholder=placeholder, id=field_id)
            yield from self.extra_fields()
            yield Static("", id="form-error")
            with Horizontal(id="form-buttons"):
                yield Button("Cancel", id="form-cancel")
                yield Button(self.SUBMIT_LABEL, variant="primary", id="form-submit")

    def extra_fields(self) -> ComposeResult:
        return iter(())

    def value(self, field_id: str) -> str:
        return self.query_one(f"#{field_id}", Input).value.strip()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "form-submit":
            self.submit()
        else:
            self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.submit()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def submit(self) -> None:
        """Check the input off the event loop (it reads the playbook and asks the gateway)."""
        self.query_one("#form-error", Static).update("checking…")
        self.query_one("#form-submit", Button).disabled = True
        self._check(self.build())

    def build(self) -> Callable[[], list[str]]:
        """A blocking function that checks the form's values and returns the argv (raises FleetgateError)."""
        raise NotImplementedError

    @work(thread=True, exclusive=True, group="form-check")
    def _check(self, build: Callable[[], list[str]]) -> None:
        try:
            argv = build()
        except FleetgateError as e:
            self.app.call_from_thread(self._invalid, e)
            return
        except OSError as e:  # a playbook path that cannot be read, the gateway unreachable
            self.app.call_from_thread(self._invalid, e)
            return
        self.app.call_from_thread(self.dismiss, argv)

    def _invalid(self, error: BaseException) -> None:
        param = getattr(error, "param", None)
        message = getattr(error, "message", None) or str(error)
        self.query_one("#form-error", Static).update(message)
        self.query_one("#form-submit", Button).disabled = False
        if param:
            found = self.query(f"#{param}")
            if found:
                found.first().focus()

    # -- checks against the gateway (blocking; the worker) ------------------------------------------------------

    def require_model(self, model: str, env: str, param: str = "model") -> None:
        from gateway.errors import InvalidRequest
        from opsctl.client import path_part

        try:
            self.source.get(f"/admin/v1/models/{path_part(env)}/{path_part(model)}")
        except FleetgateError as e:
            if getattr(e, "status", None) == 404:
                raise InvalidRequest(f"unknown model {model!r} in {env} (register it first)", param=param) from e
            raise

    def require_no_active(self, model: str, env: str) -> None:
        from gateway.errors import InvalidRequest

        active = self.source.get("/admin/v1/rollouts", model=model, env=env, active="true", limit=1)
        if active:
            raise InvalidRequest(f"rollout {active[0]['id']} of {model} in {env} is already {active[0]['status']}: "
                                 "abort it (a) or wait for it", param="model")


class StartForm(RolloutForm):
    """`opsctl rollout start MODEL --env ENV --version V [--playbook FILE] [--set k=v …]`."""

    TITLE_TEXT = "Start a rollout (canary beside stable, gated by analysis)"
    SUBMIT_LABEL = "Start"
    FIELDS = (("model", "Model", "demo-chat"), ("env", "Environment", "development, staging or production"),
              ("version", "Version", "the new release's version label, e.g. v2"),
              ("playbook", "Playbook", "default: playbooks/canary.yaml"),
              ("set", "--set (optional)", "space separated: analysis.interval_s=5 analysis.min_requests=10"))

    def build(self) -> Callable[[], list[str]]:
        from opsctl.rollout.launch import start_argv

        model, env, version = self.value("model"), self.value("env"), self.value("version")
        playbook, sets = self.value("playbook"), self.value("set")

        def check() -> list[str]:
            argv = start_argv(model, env, version, playbook, sets)
            self.require_model(model, env)
            self.require_no_active(model, env)
            return argv

        return check


class PromoteForm(RolloutForm):
    """`opsctl promote MODEL --from ENV --to ENV [--approve]`: production needs the approve box."""

    TITLE_TEXT = "Promote the release serving one environment to another"
    SUBMIT_LABEL = "Promote"
    FIELDS = (("model", "Model", "demo-chat"), ("from", "From environment", "staging"),
              ("to", "To environment", "production"),
              ("playbook", "Playbook", "default: playbooks/promote.yaml"),
              ("set", "--set (optional)", "space separated: analysis.interval_s=5"))

    def extra_fields(self) -> ComposeResult:
        yield Checkbox("Approve (required to promote to production)", id="approve")

    def build(self) -> Callable[[], list[str]]:
        from opsctl.rollout.launch import promote_argv

        model, source, target = self.value("model"), self.value("from"), self.value("to")
        approve = self.query_one("#approve", Checkbox).value
        playbook, sets = self.value("playbook"), self.value("set")

        def check() -> list[str]:
            argv = promote_argv(model, source, target, approve, playbook, sets)
            self.require_model(model, source, "from")
            self.require_model(model, target, "to")
            self.require_no_active(model, target)
            return argv

        return check


class RollbackForm(RolloutForm):
    """`opsctl rollback MODEL --env ENV [--to-revision N]` (the screen asks to confirm afterwards)."""

    TITLE_TEXT = "Roll a model back (aborts its active rollout, else returns stable to an earlier revision)"
    SUBMIT_LABEL = "Next"
    FIELDS = (("model", "Model", "demo-chat"), ("env", "Environment", "production"),
              ("revision", "Revision", "default: the previous one that served"))

    def build(self) -> Callable[[], list[str]]:
        from opsctl.rollout.launch import rollback_argv

        model, env, revision = self.value("model"), self.value("env"), self.value("revision")

        def check() -> list[str]:
            argv = rollback_argv(model, env, revision)
            self.require_model(model, env)
            return argv

        return check


def form_values(**values: Any) -> dict[str, str]:
    """Prefill values (None dropped)."""
    return {k: str(v) for k, v in values.items() if v is not None}
