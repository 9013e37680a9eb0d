"""The rollouts screen's detail panel: one rollout's steps, weights, latest gate values and recent step log.

It renders a rollout record (`GET /admin/v1/rollouts/{id}`) and its step events as the engine wrote them; the
gate values, thresholds and verdicts come from the events' `data.gates` (opsctl/rollout/analysis.py), the
weights from `data.weights`. Nothing is measured or judged here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

PHASE_MARKS = {"started": "▶", "progress": "…", "passed": "✓", "failed": "✗", "skipped": "–", "info": "·",
               "done": "✓", "rolling_back": "↺"}
PHASE_STYLES = {"started": "bold cyan", "progress": "cyan", "passed": "green", "failed": "bold red",
                "skipped": "yellow", "info": "dim", "done": "green", "rolling_back": "bold yellow"}
STATUS_STYLES = {"running": "bold cyan", "aborting": "bold yellow", "succeeded": "bold green",
                 "failed": "bold red", "aborted": "bold yellow"}
PERCENT_GATES = ("max_error_rate", "max_error_rate_increase")
GATE_LABELS = {"min_requests": "min requests", "max_error_rate": "error rate",
               "max_error_rate_increase": "error rate vs stable", "max_p95_latency_ratio": "p95 latency",
               "max_p95_ttft_ratio": "p95 TTFT", "max_p95_latency_ms": "p95 latency (SLO)"}
LOG_LINES = 8


@dataclass(frozen=True)
class StepLine:
    """One playbook step as the panel lists it: its label and the phase its newest event reported."""

    index: int
    label: str
    phase: str
    message: str


def step_label(step: Mapping[str, Any]) -> str:
    """`weight 10%`, `smoke`, … from a spec step ({"kind", "args"})."""
    kind = str(step.get("kind") or "?")
    args = step.get("args") if isinstance(step.get("args"), Mapping) else {}
    if kind == "weight" and args.get("percent") is not None:
        return f"weight {args['percent']}%"
    if kind == "pause" and isinstance(args.get("seconds"), int | float):
        return f"pause {args['seconds']:g} s"
    return kind


def step_lines(rollout: Mapping[str, Any], events: Sequence[Mapping[str, Any]]) -> list[StepLine]:
    """The spec's steps, each with the phase of its newest step event (rollback events are not steps)."""
    spec = rollout.get("spec") if isinstance(rollout.get("spec"), Mapping) else {}
    steps = [s for s in spec.get("steps") or () if isinstance(s, Mapping)]
    newest: dict[int, Mapping[str, Any]] = {}
    for event in events:
        if event.get("name") != "rollback" and isinstance(event.get("step"), int):
            newest[event["step"]] = event
    return [StepLine(i, step_label(step), str(newest.get(i, {}).get("phase") or "pending"),
                     str(newest.get(i, {}).get("message") or "")) for i, step in enumerate(steps)]


def latest(events: Sequence[Mapping[str, Any]], key: str) -> tuple[Mapping[str, Any] | None, Any]:
    """The newest event whose data holds `key`, and that value."""
    for event in reversed(events):
        data = event.get("data")
        if isinstance(data, Mapping) and data.get(key):
            return event, data[key]
    return None, None


def gate_value(name: str, value: Any) -> str:
    """A gate's value or threshold in its unit (fractions as %, counts, milliseconds)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—"
    if name in PERCENT_GATES:
        return f"{value * 100:.2f}%"
    if name == "min_requests":
        return f"{value:.0f}"
    return f"{value:.0f} ms"


def gate_table(gates: Sequence[Mapping[str, Any]], of: str) -> Table:
    table = Table(title=Text(f"gates of {of}", style="bold"), title_justify="left", expand=True,
                  show_edge=False, pad_edge=False)
    for column, ratio in (("gate", 3), ("value", 2), ("threshold", 2), ("result", 1), ("detail", 6)):
        table.add_column(column, ratio=ratio, overflow="ellipsis", no_wrap=True)
    for gate in gates:
        if not isinstance(gate, Mapping):
            continue
        name = str(gate.get("name") or "?")
        limit = ("≥ " if name == "min_requests" else "≤ ") + gate_value(name, gate.get("threshold"))
        if gate.get("skipped"):
            verdict = Text("skip", style="yellow")
        else:
            verdict = Text("pass", style="bold green") if gate.get("passed") else Text("FAIL", style="bold red")
        table.add_row(GATE_LABELS.get(name, name), gate_value(name, gate.get("value")),
                      limit if gate.get("threshold") is not None else "—", verdict,
                      Text(str(gate.get("detail") or ""), style="dim"))
    return table


class RolloutDetail(Static):
    """Shows one rollout; `show_rollout(None, [])` shows a hint instead."""

    DEFAULT_CSS = """
    RolloutDetail {
        height: 1fr;
        padding: 0 1;
        border: round $primary 50%;
        border-title-color: $text;
    }
    """

    def on_mount(self) -> None:
        self.border_title = "rollout"

    def show_rollout(self, rollout: Mapping[str, Any] | None, events: Sequence[Mapping[str, Any]]) -> None:
        if rollout is None:
            self.border_title = "rollout"
            self.update(Text("No rollout selected. s starts one, p promotes a release.", style="dim"))
            return
        self.border_title = f"{rollout.get('id')} · {rollout.get('model')} in {rollout.get('environment')}"
        self.update(self._render_rollout(rollout, events))

    def _render_rollout(self, rollout: Mapping[str, Any], events: Sequence[Mapping[str, Any]]) -> RenderableType:
        parts: list[RenderableType] = [self._summary(rollout)]
        parts.append(self._steps(rollout, events))
        weights_event, weights = latest(events, "weights")
        if isinstance(weights, Mapping):
            parts.append(Text.assemble(("weights  ", "bold"), ", ".join(
                f"{release} {percent:g}%" if isinstance(percent, int | float) else f"{release} ?"
                for release, percent in weights.items())))
        gates_event, gates = latest(events, "gates")
        if isinstance(gates, list) and gates_event is not None:
            step = gates_event.get("step")
            of = f"{step + 1}. {gates_event.get('name')}" if isinstance(step, int) else str(gates_event.get("name"))
            parts.append(gate_table(gates, f"{of} ({gates_event.get('phase')})"))
        parts.append(self._log(events))
        return Group(*parts)

    @staticmethod
    def _summary(rollout: Mapping[str, Any]) -> Text:
        status = str(rollout.get("status") or "?")
        text = Text.assemble(("status ", "bold"), (status, STATUS_STYLES.get(status, "")),
                             f"  ·  version {rollout.get('version')}  ·  {rollout.get('kind')} "
                             f"({rollout.get('playbook') or '-'})")
        owner = rollout.get("owner")
        if isinstance(owner, Mapping) and status in ("running", "aborting"):
            text.append(f"  ·  driver pid {owner.get('pid')}", style="dim")
        if rollout.get("reason"):
            text.append(f"\nreason {rollout['reason']}", style="yellow" if status != "failed" else "red")
        return text

    @staticmethod
    def _steps(rollout: Mapping[str, Any], events: Sequence[Mapping[str, Any]]) -> Table:
        current = rollout.get("step") if rollout.get("status") in ("running", "aborting") else None
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(width=3, justify="right")
        table.add_column(width=1)
        table.add_column(width=12, no_wrap=True)
        table.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        for line in step_lines(rollout, events):
            style = "reverse" if line.index == current else ""
            table.add_row(Text(f"{line.index + 1}.", style="dim"),
                          Text(PHASE_MARKS.get(line.phase, "·"), style=PHASE_STYLES.get(line.phase, "dim")),
                          Text(line.label, style=f"bold {style}".strip()), Text(line.message, style=style))
        return table

    @staticmethod
    def _log(events: Sequence[Mapping[str, Any]]) -> RenderableType:
        """The newest step events first (the panel cuts what does not fit at the bottom)."""
        if not events:
            return Text("no step events yet", style="dim")
        table = Table(title=Text("recent steps, newest first", style="bold"), title_justify="left", box=None,
                      show_header=False, expand=True, pad_edge=False, padding=(0, 1, 0, 0))
        table.add_column(width=8, no_wrap=True, style="dim")
        table.add_column(width=2, no_wrap=True, justify="right")
        table.add_column(width=10, no_wrap=True)
        table.add_column(width=8, no_wrap=True)
        table.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        for event in reversed(events[-LOG_LINES:]):
            ts = str(event.get("ts") or "")
            phase = str(event.get("phase") or "")
            step = event.get("step")
            table.add_row(ts[11:19] if len(ts) >= 19 else ts, str(step + 1) if isinstance(step, int) else "-",
                          str(event.get("name") or ""), Text(phase, style=PHASE_STYLES.get(phase, "")),
                          str(event.get("message") or ""))
        return table
