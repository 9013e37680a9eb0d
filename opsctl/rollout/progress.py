"""Showing a rollout as it runs: a live panel on a terminal, plain timestamped lines in logs, JSON lines for CI.

The engine hands every step event here (the same JSON it posts to the rollout record). Events are data from a
store another opsctl may have written, so every renderer takes odd shapes in its stride instead of crashing.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TextIO

PHASE_MARKS = {"pending": "○", "started": "…", "progress": "…", "passed": "✓", "failed": "✗", "skipped": "↷",
               "info": "·"}
PHASE_STYLES = {"passed": "green", "failed": "bold red", "skipped": "yellow", "started": "cyan",
                "progress": "cyan", "info": "dim"}
STATUS_STYLES = {"succeeded": "bold green", "failed": "bold red", "aborted": "bold yellow", "running": "cyan",
                 "aborting": "yellow"}
PERCENT_GATES = ("max_error_rate", "max_error_rate_increase")  # gates whose value is a fraction


class Progress(Protocol):
    def event(self, ev: Mapping[str, Any]) -> None:
        """Show one rollout event: {rollout_id, step, name, phase, message, data} (data may hold "weights":
        {release: percent}, "gates": [GateResult.to_dict()], "elapsed_s")."""
        ...

    def close(self, result: Mapping[str, Any]) -> None:
        """Show the outcome: {"rollout_id", "status", "reason", "elapsed_s"}."""
        ...


def make_progress(output: str, *, stream: TextIO | None = None, total_steps: int | None = None,
                  steps: Sequence[str] | None = None) -> Progress:
    """The display for `output`: "json" → JSON lines; "live" or a terminal → a live panel; else plain lines.

    Args:
        output: "json", "table" (the default display: live on a TTY, plain otherwise), "live" or "plain".
        stream: where to write (default stdout).
        total_steps: the playbook's step count, for "[3/9]".
        steps: the playbook's step kinds, so the live panel lists the steps still to come.
    """
    stream = sys.stdout if stream is None else stream
    mode = str(getattr(output, "value", output))
    if mode == "json":
        return JsonProgress(stream)
    if mode == "live" or (mode != "plain" and _is_terminal(stream)):
        from rich.console import Console

        return LiveProgress(Console(file=stream), total_steps=total_steps, steps=steps)
    return PlainProgress(stream, total_steps=total_steps)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


# --- reading events defensively -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Event:
    rollout_id: str | None
    step: int | None
    name: str
    phase: str
    message: str
    data: Mapping[str, Any]


def _read_event(ev: Any) -> _Event:
    if not isinstance(ev, Mapping):
        return _Event(None, None, "event", "info", _short(ev), {})
    step, data, name = ev.get("step"), ev.get("data"), _short(ev.get("name") or "step")
    # a rollout status change ({"name": "status", "status", "phase", "reason"}): its phase is the status
    phase = ev.get("status") if name == "status" and ev.get("status") else ev.get("phase")
    return _Event(rollout_id=None if ev.get("rollout_id") is None else str(ev.get("rollout_id")),
                  step=step if isinstance(step, int) and not isinstance(step, bool) else None,
                  name=name, phase=_short(phase or "info"), message=_short(ev.get("message") or ev.get("reason") or ""),
                  data=data if isinstance(data, Mapping) else {})


def _short(value: Any, limit: int = 500) -> str:
    text = value if isinstance(value, str) else str(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _weights(data: Mapping[str, Any]) -> dict[str, float] | None:
    weights = data.get("weights")
    if not isinstance(weights, Mapping):
        return None
    numbers = {str(release): _number(percent) for release, percent in weights.items()}
    return {release: percent for release, percent in numbers.items() if percent is not None}


def _gates(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    gates = data.get("gates")
    if not isinstance(gates, list):
        return []
    return [g for g in gates if isinstance(g, Mapping)]


def _gate_value(name: str, value: Any) -> str:
    number = _number(value)
    if number is None:
        return "—" if value is None else _short(value, 40)
    if name in PERCENT_GATES:
        return f"{number * 100:.2f}%"
    if name == "min_requests":
        return f"{number:.0f}"
    return f"{number:.0f} ms"


def _weights_text(weights: Mapping[str, float]) -> str:
    return ", ".join(f"{release} {percent:g}%" for release, percent in weights.items())


def _clock() -> str:
    return datetime.now().strftime("%H:%M:%S")


def _elapsed(result: Mapping[str, Any]) -> str:
    seconds = _number(result.get("elapsed_s"))
    return "" if seconds is None else f" in {seconds:.1f} s"


# --- JSON lines ---------------------------------------------------------------------------------------------

class JsonProgress:
    """One JSON object per line: {"event": "step", …the event…} for each event, {"event": "result", …} last."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def event(self, ev: Mapping[str, Any]) -> None:
        self._write({"event": "step", **ev} if isinstance(ev, Mapping) else {"event": "step", "message": str(ev)})

    def close(self, result: Mapping[str, Any]) -> None:
        self._write({"event": "result", **result} if isinstance(result, Mapping) else
                    {"event": "result", "status": str(result)})

    def _write(self, obj: Mapping[str, Any]) -> None:
        self.stream.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")
        self.stream.flush()


# --- plain lines --------------------------------------------------------------------------------------------

class PlainProgress:
    """Timestamped lines for logs and pipes: "12:00:03 [4/9] smoke passed: 3/3 OK"."""

    def __init__(self, stream: TextIO, *, total_steps: int | None = None) -> None:
        self.stream = stream
        self.total_steps = total_steps

    def event(self, ev: Mapping[str, Any]) -> None:
        e = _read_event(ev)
        if e.name == "status":
            self._write(_rollout_words(e.rollout_id, e.phase) + (f": {e.message}" if e.message else ""))
            return
        where = "" if e.step is None else (
            f"[{e.step + 1}/{self.total_steps}] " if self.total_steps else f"[{e.step + 1}] ")
        text = f"{where}{e.name} {e.phase}" + (f": {e.message}" if e.message else "")
        weights = _weights(e.data)
        if weights:
            text += f" | weights: {_weights_text(weights)}"
        gates = _gates(e.data)
        if gates:
            text += " | " + "; ".join(_gate_words(g) for g in gates)
        self._write(text)

    def close(self, result: Mapping[str, Any]) -> None:
        if not isinstance(result, Mapping):
            result = {"status": str(result)}
        reason = result.get("reason")
        self._write(_rollout_words(result.get("rollout_id"), result.get("status") or "finished")
                    + _elapsed(result) + (f": {_short(reason)}" if reason else ""))

    def _write(self, line: str) -> None:
        self.stream.write(f"{_clock()} {line}\n")
        self.stream.flush()


def _rollout_words(rollout_id: Any, status: Any) -> str:
    # A standalone rollback (opsctl rollback with no rollout running) has no rollout record.
    return " ".join(_short(part) for part in ("rollout" if rollout_id else "rollback", rollout_id, status) if part)


def _gate_words(gate: Mapping[str, Any]) -> str:
    verdict = "skipped" if gate.get("skipped") else "ok" if gate.get("passed") else "FAIL"
    return f"{verdict} {_short(gate.get('detail') or gate.get('name') or '?')}"


# --- the live panel -----------------------------------------------------------------------------------------

@dataclass
class _StepView:
    name: str
    phase: str = "pending"
    message: str = ""


@dataclass
class _View:
    """What the panel shows, updated by events."""

    rollout_id: str | None = None
    status: str = "running"
    steps: dict[int, _StepView] = field(default_factory=dict)
    loose: list[_StepView] = field(default_factory=list)  # events without a step number
    weights: dict[str, float] = field(default_factory=dict)
    gates: list[Mapping[str, Any]] = field(default_factory=list)
    gates_of: str = ""
    result: str = ""


class LiveProgress:
    """A rich Live panel: the steps with ✓/✗/…, current weights, the last gate table, elapsed time."""

    def __init__(self, console: Any, *, total_steps: int | None = None, steps: Sequence[str] | None = None,
                 clock: Any = time.monotonic) -> None:
        from rich.live import Live

        self.console = console
        self.total_steps = total_steps if total_steps is not None else (len(steps) if steps else None)
        self.clock = clock
        self.started = clock()
        self.view = _View(steps={i: _StepView(str(name)) for i, name in enumerate(steps or ())})
        self._lock = threading.Lock()
        self._live = Live(get_renderable=self._render, console=console, refresh_per_second=4, transient=False,
                          redirect_stdout=False, redirect_stderr=False)
        self._live.start()

    def event(self, ev: Mapping[str, Any]) -> None:
        e = _read_event(ev)
        with self._lock:
            view = self.view
            view.rollout_id = e.rollout_id or view.rollout_id
            if e.name == "status":
                view.status = e.phase
            elif e.step is None:
                view.loose = [*view.loose[-4:], _StepView(e.name, e.phase, e.message)]
            else:
                step = view.steps.setdefault(e.step, _StepView(e.name))
                step.name, step.phase, step.message = e.name, e.phase, e.message
            weights = _weights(e.data)
            if weights:
                view.weights = weights
            gates = _gates(e.data)
            if gates:
                view.gates, view.gates_of = gates, e.name if e.step is None else f"{e.step + 1}. {e.name}"
        self._live.refresh()

    def close(self, result: Mapping[str, Any]) -> None:
        if not isinstance(result, Mapping):
            result = {"status": str(result)}
        reason = result.get("reason")
        with self._lock:
            self.view.rollout_id = str(result.get("rollout_id") or self.view.rollout_id or "") or None
            self.view.status = _short(result.get("status") or "finished")
            self.view.result = f"{self.view.status}{_elapsed(result)}" + (f": {_short(reason)}" if reason else "")
        self._live.refresh()
        self._live.stop()

    def _render(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        with self._lock:
            view = self.view
            elapsed = self.clock() - self.started
            title = Text.assemble(("rollout ", "bold"), (view.rollout_id or "", "bold"), "  ",
                                  (view.status, STATUS_STYLES.get(view.status, "")), f"  {_duration(elapsed)}")
            steps = Table.grid(padding=(0, 1))
            for index in sorted(view.steps):
                step = view.steps[index]
                steps.add_row(Text(f"{index + 1}.", style="dim"), _mark(step.phase), Text(step.name, style="bold"),
                              Text(step.message))
            for step in view.loose:
                steps.add_row(Text(""), _mark(step.phase), Text(step.name), Text(step.message))
            parts: list[Any] = [steps]
            if view.weights:
                parts.append(Text.assemble(("weights  ", "bold"), _weights_text(view.weights)))
            if view.gates:
                parts.append(_gate_table(view.gates, view.gates_of))
            if view.result:
                parts.append(Text(view.result, style=STATUS_STYLES.get(view.status, "bold")))
            total = f" · {self.total_steps} steps" if self.total_steps else ""
            return Panel(Group(*parts), title=title, subtitle=Text(f"opsctl rollout{total}", style="dim"),
                         title_align="left")


def _mark(phase: str) -> Any:
    from rich.text import Text

    return Text(PHASE_MARKS.get(phase, "·"), style=PHASE_STYLES.get(phase, "dim"))


def _gate_table(gates: Sequence[Mapping[str, Any]], of: str) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"gates of {of}", style="bold"), title_justify="left", show_edge=False, pad_edge=False)
    for column in ("gate", "value", "threshold", "result", "detail"):
        table.add_column(column, overflow="fold")
    for gate in gates:
        name = _short(gate.get("name") or "?", 60)
        ok = bool(gate.get("passed"))
        verdict = ("skipped", "yellow") if gate.get("skipped") else (("pass", "green") if ok else ("FAIL", "bold red"))
        table.add_row(Text(name), Text(_gate_value(name, gate.get("value"))),
                      Text(_gate_value(name, gate.get("threshold"))), Text(verdict[0], style=verdict[1]),
                      Text(_short(gate.get("detail") or "", 200), style="dim"))
    return table


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60:02d}:{seconds % 60:02d}"
