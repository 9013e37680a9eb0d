"""Rollouts screen: running and recent rollouts, live step progress and gates; start, promote, abort, roll back.

The table and the selected rollout's record come from `/admin/v1/rollouts` (periodic refresh as a fallback);
`rollout` events from `/admin/v1/events` update them as they happen. Actions never run the engine in this
process: they launch a detached `opsctl` (opsctl/rollout/launch.py) that outlives the console, and a worker
watches it to report how it ended.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header

from gateway.errors import FleetgateError
from tui.screens.base import FleetScreen, PaletteAction
from tui.widgets.rollout_detail import STATUS_STYLES, RolloutDetail, step_label
from tui.widgets.rollout_forms import PromoteForm, RollbackForm, StartForm, form_values
from tui.widgets.status import Freshness

if TYPE_CHECKING:
    from opsctl.rollout.launch import LaunchTarget, Launched

ACTIVE = ("running", "aborting")
LIST_LIMIT = 50
# (key, label, width): 100 cells of text plus 16 of padding fit a 120-column terminal
COLUMNS = (("id", "id", 19), ("model", "model", 12), ("env", "env", 10), ("version", "version", 8),
           ("step", "step", 16), ("state", "state", 18), ("started", "started", 11), ("age", "age", 6))
WATCH_POLL_S = 0.5


def ordered(rollouts: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Active rollouts first, each group in the API's order (newest first)."""
    listed = list(rollouts)
    return [r for r in listed if r.get("status") in ACTIVE] + [r for r in listed if r.get("status") not in ACTIVE]


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def age_text(created: Any, now: datetime) -> str:
    """`42s`, `3m05s`, `2h10m`, `4d` since `created` (an ISO time)."""
    start = _parse_time(created)
    if start is None:
        return "?"
    seconds = max(0, int((now - start).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
    return f"{seconds // 86400}d"


def step_text(rollout: Mapping[str, Any]) -> str:
    steps = (rollout.get("spec") or {}).get("steps") or []
    index = rollout.get("step") if isinstance(rollout.get("step"), int) else 0
    label = step_label(steps[index]) if 0 <= index < len(steps) else "?"
    return f"{index + 1}/{len(steps)} {label}"


def state_text(rollout: Mapping[str, Any]) -> str:
    status = str(rollout.get("status") or "?")
    phase = rollout.get("phase")
    style = STATUS_STYLES.get(status, "")
    text = f"[{style}]{status}[/]" if style else status
    return f"{text} · {phase}" if phase and status in ACTIVE else text


class RolloutsScreen(FleetScreen):
    """Table of rollouts (active first) over the selected rollout's detail panel."""

    TITLE = "Rollouts"
    MUTATING_ACTIONS: ClassVar[frozenset[str]] = frozenset({"start", "promote", "abort", "rollback"})
    BINDINGS = [
        Binding("s", "start", "Start rollout"),
        Binding("p", "promote", "Promote"),
        Binding("a", "abort", "Abort"),
        Binding("b", "rollback", "Rollback"),
    ]
    DEFAULT_CSS = """
    RolloutsScreen #rollouts {
        height: 10;
        border: round $primary 50%;
    }
    """

    def __init__(self) -> None:
        super().__init__()
        self.selected_id: str | None = None
        self.rollouts: dict[str, dict[str, Any]] = {}
        self.detail: dict[str, Any] | None = None
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.launched: list[Launched] = []
        self._stop = threading.Event()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Freshness()
        table: DataTable = DataTable(id="rollouts", cursor_type="row", zebra_stripes=True)
        for key, label, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        yield table
        yield RolloutDetail(id="detail")
        yield Footer()

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one(RolloutDetail).show_rollout(None, [])

    def on_unmount(self) -> None:
        self._stop.set()

    # -- data ---------------------------------------------------------------------------------------------------

    def fetch(self) -> dict[str, Any]:
        """The newest rollouts and the selected one's record with its events (the first row if none is)."""
        from opsctl.client import path_part

        rollouts = ordered(self.source.get("/admin/v1/rollouts", limit=LIST_LIMIT))
        wanted = self.selected_id
        if wanted is None or wanted not in {r.get("id") for r in rollouts}:
            wanted = rollouts[0]["id"] if rollouts else None
        detail = self.source.get(f"/admin/v1/rollouts/{path_part(wanted)}") if wanted else None
        return {"rollouts": rollouts, "detail": detail}

    def show(self, data: dict[str, Any]) -> None:
        rollouts = [dict(r) for r in data["rollouts"]]
        detail = data.get("detail")
        if detail is not None:
            self._take_detail(dict(detail))
        self._fill_table(rollouts)
        self._show_detail()

    def _take_detail(self, detail: dict[str, Any]) -> None:
        """Keep the record; merge its events with live ones already received (by event id)."""
        events = detail.pop("events", None) or []
        known = {e.get("id"): e for e in self.events.get(detail["id"], [])}
        known.update({e.get("id"): e for e in events})
        self.events[detail["id"]] = sorted(known.values(), key=lambda e: (e.get("id") or 0))
        self.detail = detail
        if self.selected_id is None:
            self.selected_id = detail["id"]

    def _fill_table(self, rollouts: list[dict[str, Any]]) -> None:
        table = self.query_one("#rollouts", DataTable)
        order = [r["id"] for r in rollouts]
        self.rollouts = {r["id"]: r for r in rollouts}
        if order == [str(key.value) for key in table.rows]:
            for rollout in rollouts:
                self._update_row(rollout)
        else:
            table.clear()
            for rollout in rollouts:
                table.add_row(*self._cells(rollout), key=rollout["id"])
        if self.selected_id in self.rollouts and table.get_row_index(self.selected_id) != table.cursor_row:
            # the selection moved without the cursor (a rollout just launched is selected): follow it
            table.move_cursor(row=table.get_row_index(self.selected_id), animate=False)

    def _cells(self, rollout: Mapping[str, Any]) -> list[str]:
        started = _parse_time(rollout.get("created_at"))
        return [str(rollout.get("id")), str(rollout.get("model")), str(rollout.get("environment")),
                str(rollout.get("version")), step_text(rollout), state_text(rollout),
                started.strftime("%m-%d %H:%M") if started else "?",
                age_text(rollout.get("created_at"), self.source.now())]

    def _update_row(self, rollout: Mapping[str, Any]) -> None:
        table = self.query_one("#rollouts", DataTable)
        for (key, _, _), value in zip(COLUMNS, self._cells(rollout), strict=True):
            table.update_cell(rollout["id"], key, value)

    def _show_detail(self) -> None:
        panel = self.query_one(RolloutDetail)
        if self.detail is None or self.detail.get("id") != self.selected_id:
            record = self.rollouts.get(self.selected_id or "")
            panel.show_rollout(record, self.events.get(self.selected_id or "", []))
            return
        panel.show_rollout(self.detail, self.events.get(self.detail["id"], []))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        key = str(event.row_key.value)
        if key != self.selected_id:
            self.selected_id = key
            self._show_detail()
            self.refresh_data()

    # -- live events ----------------------------------------------------------------------------------------------

    def on_fleet_event(self, event: Any) -> None:
        """A `rollout` event: a status change updates its row, a step event the selected rollout's panel."""
        if event.type != "rollout" or not isinstance(event.data, Mapping):
            return
        data = event.data
        rollout_id = data.get("rollout_id")
        record = self.rollouts.get(str(rollout_id))
        if record is None:
            if self.is_current:  # a rollout this table does not list yet (a hidden screen reloads on resume)
                self.refresh_data()
            return
        if data.get("name") == "status" and "status" in data:
            changes = {k: data[k] for k in ("status", "step", "phase", "reason") if k in data}
            record.update(changes)
            if self.detail is not None and self.detail.get("id") == rollout_id:
                self.detail.update(changes)
            self._update_row(record)
        elif "phase" in data and "id" in data:
            events = self.events.setdefault(str(rollout_id), [])
            if all(e.get("id") != data["id"] for e in events):
                events.append(dict(data))
        if rollout_id == self.selected_id:
            self._show_detail()

    # -- actions --------------------------------------------------------------------------------------------------

    def selected(self) -> Mapping[str, Any] | None:
        return self.rollouts.get(self.selected_id or "")

    def _prefill(self) -> dict[str, str]:
        chosen = self.selected() or {}
        return form_values(model=chosen.get("model"), env=chosen.get("environment"))

    def action_start(self) -> None:
        self.app.push_screen(StartForm(self.source, self._prefill()), self._start_checked)

    def action_promote(self) -> None:
        chosen = self.selected() or {}
        values = form_values(model=chosen.get("model"), **{"from": "staging", "to": "production"})
        self.app.push_screen(PromoteForm(self.source, values), self._promote_checked)

    def action_rollback(self) -> None:
        self.app.push_screen(RollbackForm(self.source, self._prefill()), self._rollback_checked)

    def action_abort(self) -> None:
        chosen = self.selected()
        if chosen is None or chosen.get("status") not in ACTIVE:
            self.notify("select a running rollout to abort", severity="warning")
            return
        rollout_id = str(chosen["id"])
        question = (f"Abort rollout {rollout_id} of {chosen.get('model')} in {chosen.get('environment')}? "
                    "It rolls back to stable.")
        self.confirm(question, lambda: self._launch("abort " + rollout_id, _abort_argv(rollout_id)),
                     confirm_label="Abort")

    def _start_checked(self, argv: list[str] | None) -> None:
        if argv:
            model, env = argv[2], argv[4]
            self._launch(f"rollout of {model} in {env}", argv, find=(model, env))

    def _promote_checked(self, argv: list[str] | None) -> None:
        if argv:
            model, target = argv[1], argv[argv.index("--to") + 1]
            self._launch(f"promotion of {model} to {target}", argv, find=(model, target))

    def _rollback_checked(self, argv: list[str] | None) -> None:
        if not argv:
            return
        model, env = argv[1], argv[3]
        revision = f" to revision {argv[-1]}" if "--to-revision" in argv else " to the previous revision"
        self.confirm(f"Roll {model} back in {env}{revision}? An active rollout of it is aborted.",
                     lambda: self._launch(f"rollback of {model} in {env}", argv), confirm_label="Roll back")

    def _launch(self, description: str, argv: list[str], find: tuple[str, str] | None = None) -> None:
        """Launch `opsctl argv` detached (a worker); with `find`, wait for its rollout record and select it."""
        self.run_action(description, self._launch_blocking, argv, find,
                        done=lambda result: self._launched(description, *result))

    def _launch_blocking(self, argv: list[str], find: tuple[str, str] | None) -> tuple[Launched, str | None]:
        from opsctl.rollout.launch import await_rollout, launch

        launched = launch(argv, self._launch_target(), label=" ".join(a for a in argv[:3] if not a.startswith("-")))
        if find is None:
            return launched, None
        model, env = find

        def mine() -> dict[str, Any] | None:
            found = self.source.get("/admin/v1/rollouts", model=model, env=env, active="true", limit=1)
            return found[0] if found and (found[0].get("owner") or {}).get("pid") == launched.pid else None

        try:
            rollout = await_rollout(launched, mine)
        except FleetgateError:
            launched.wait(5.0)  # it has exited: reap it
            raise
        return launched, str(rollout["id"])

    def _launch_target(self) -> LaunchTarget:
        """Where a launched `opsctl` acts: this console's gateway, token and state dir (a live source only)."""
        from opsctl.client import find_admin_token
        from opsctl.rollout.launch import LaunchTarget
        from tui.source import ReadOnlySource

        settings = getattr(self.source, "settings", None)
        url = getattr(self.source, "url", None)
        if settings is None or not url:
            raise ReadOnlySource("this console's source cannot launch opsctl (not a live gateway)")
        return LaunchTarget(gateway_url=url, admin_token=find_admin_token(settings, getattr(self.source, "admin_token", None)),
                            state_dir=Path(settings.state_dir).resolve())

    def _launched(self, description: str, launched: Launched, rollout_id: str | None) -> None:
        self.launched.append(launched)
        where = f"pid {launched.pid}, log {launched.log}"
        if rollout_id is not None:
            self.selected_id = rollout_id
            self.notify(f"{rollout_id} running ({where})", title=f"{description} started")
        else:
            self.notify(where, title=f"{description} started")
        self._watch(description, launched)

    @work(thread=True, group="launched")
    def _watch(self, description: str, launched: Launched) -> None:
        """Wait for a launched command to end (not past this screen's life) and say how it ended."""
        code = launched.wait(float("inf"), stop=self._stop.is_set)
        if code is None:
            return
        self.app.call_from_thread(self._ended, description, launched, code)

    def _ended(self, description: str, launched: Launched, code: int) -> None:
        result = launched.result() or {}
        status = result.get("status") or ("done" if code == 0 else f"exit {code}")
        if code == 0:
            self.notify(f"{status} ({launched.log.name})", title=f"{description} finished")
        else:
            self.notify(f"{status}: {launched.last_error()}", title=f"{description} did not succeed",
                        severity="error")
        self.refresh_data()

    def palette_actions(self) -> Iterable[PaletteAction]:
        actions: list[tuple[str, str, Callable[[], Any]]] = [
            ("Start a rollout", "A new version beside stable, gated by analysis (s)", self.action_start),
            ("Promote a release", "The version serving one environment to another (p)", self.action_promote),
            ("Abort the selected rollout", "Stop it and roll back (a)", self.action_abort),
            ("Roll back a model", "Stable back to an earlier revision (b)", self.action_rollback),
        ]
        return [PaletteAction(title, help_, callback, mutating=True) for title, help_, callback in actions]


def _abort_argv(rollout_id: str) -> list[str]:
    from opsctl.rollout.launch import abort_argv

    return abort_argv(rollout_id)
