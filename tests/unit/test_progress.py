"""Rollout progress: JSON lines for CI, plain lines for logs, the live panel for terminals; odd data never crashes."""

from __future__ import annotations

import io
import json
import re
from datetime import datetime

import pytest
from rich.console import Console

from opsctl.common import Output
from opsctl.rollout.analysis import GateResult
from opsctl.rollout.progress import JsonProgress, LiveProgress, PlainProgress, make_progress

STEPS = ["deploy", "wait_ready", "register", "smoke", "shadow", "weight", "weight", "weight", "finalize"]
GATES = [GateResult("min_requests", 40.0, 20.0, True, "40 requests ≥ 20").to_dict(),
         GateResult("max_error_rate", 0.05, 0.02, False, "error rate 5% (2/40) > 2%").to_dict(),
         GateResult("max_p95_ttft_ratio", None, None, True, "no baseline: stable has no p95 TTFT samples",
                    True).to_dict()]


def event(step, name, phase, message="", **data):
    """An event as the engine shows it: the JSON the admin API stored."""
    return {"id": step + 1, "rollout_id": "ro_1", "ts": "2025-01-01T00:00:00Z", "step": step, "name": name,
            "phase": phase, "message": message, "data": {"elapsed_s": 1.5, **data}}


EVENTS = [
    event(0, "deploy", "started", "deploying demo-chat-production-canary"),
    event(0, "deploy", "passed", "revision 1"),
    event(3, "smoke", "passed", "3/3 OK"),
    event(5, "weight", "progress", "10 % of the traffic to demo-chat-production-canary",
          weights={"demo-chat-production": 90.0, "demo-chat-production-canary": 10.0}),
    event(5, "weight", "failed", "weight analysis failed", gates=GATES),
    {"rollout_id": "ro_1", "name": "status", "status": "aborting", "step": 5, "phase": "rolling_back",
     "reason": "gate failed"},
]
RESULT = {"rollout_id": "ro_1", "status": "failed", "reason": "max_error_rate failed", "elapsed_s": 42.25}

ODD = [None, "just a string", ["a", 1], {}, {"step": "three", "name": None, "phase": 7, "data": "nope"},
       {"step": True, "data": {"weights": {"a": "x", "b": float("nan"), "c": 5}, "gates": [1, None, {}]}},
       {"step": 2, "name": "x" * 5000, "message": {"nested": [1, 2]}, "data": {"gates": "all good"}},
       {"step": -1, "name": "weird", "phase": "unknown-phase", "data": {"gates": [{"name": "max_error_rate",
                                                                                  "value": "high"}]}}]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_parse_one_object_per_event_and_a_result():
    stream = io.StringIO()
    progress = make_progress("json", stream=stream, total_steps=9)
    assert isinstance(progress, JsonProgress)
    for ev in EVENTS:
        progress.event(ev)
    progress.event({"step": 1, "data": {"when": datetime(2025, 1, 1), "odd": {1, 2}}})  # not JSON-able: as text
    progress.close(RESULT)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == len(EVENTS) + 2
    assert lines[0] == {"event": "step", **EVENTS[0]}
    assert lines[4]["data"]["gates"][1]["passed"] is False
    assert lines[-2]["data"]["when"] == "2025-01-01 00:00:00"
    assert lines[-1] == {"event": "result", **RESULT}


def test_plain_lines():
    stream = io.StringIO()
    progress = make_progress(Output.table, stream=stream, total_steps=9)  # not a terminal: plain
    assert isinstance(progress, PlainProgress)
    for ev in EVENTS:
        progress.event(ev)
    progress.close(RESULT)
    lines = stream.getvalue().splitlines()
    assert all(re.match(r"\d\d:\d\d:\d\d ", line) for line in lines)
    body = [line[9:] for line in lines]
    assert body[0] == "[1/9] deploy started: deploying demo-chat-production-canary"
    assert body[2] == "[4/9] smoke passed: 3/3 OK"
    assert body[3] == ("[6/9] weight progress: 10 % of the traffic to demo-chat-production-canary | weights: "
                       "demo-chat-production 90%, demo-chat-production-canary 10%")
    assert body[4] == ("[6/9] weight failed: weight analysis failed | ok 40 requests ≥ 20; FAIL error rate 5% "
                       "(2/40) > 2%; skipped no baseline: stable has no p95 TTFT samples")
    assert body[5] == "rollout ro_1 aborting: gate failed"
    assert body[6] == "rollout ro_1 failed in 42.2 s: max_error_rate failed"


def test_plain_lines_without_a_step_count():
    stream = io.StringIO()
    progress = PlainProgress(stream)
    progress.event(event(2, "register", "passed", "2 endpoints"))
    progress.close({"rollout_id": "ro_1", "status": "succeeded"})
    progress.close({"rollout_id": None, "status": "succeeded"})  # a standalone rollback has no rollout record
    assert [line[9:] for line in stream.getvalue().splitlines()] == ["[3] register passed: 2 endpoints",
                                                                     "rollout ro_1 succeeded",
                                                                     "rollback succeeded"]


@pytest.mark.parametrize("output", ["json", "plain", "table"])
def test_odd_events_never_crash(output):
    stream = io.StringIO()
    progress = make_progress(output, stream=stream)
    for ev in ODD:
        progress.event(ev)
    progress.close({"status": None, "elapsed_s": "soon", "reason": ["x"]})
    progress.close("not a mapping")
    assert stream.getvalue().count("\n") == len(ODD) + 2


def test_make_progress_picks_the_live_panel_on_a_terminal():
    terminal = Terminal()
    progress = make_progress("table", stream=terminal, total_steps=9, steps=STEPS)
    assert isinstance(progress, LiveProgress)
    progress.close(RESULT)
    assert "failed" in terminal.getvalue()
    forced = make_progress("live", stream=io.StringIO())
    assert isinstance(forced, LiveProgress)
    forced.close({"status": "succeeded"})
    assert isinstance(make_progress("plain", stream=Terminal()), PlainProgress)


def test_live_panel_renders_steps_weights_gates_and_result():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=140, color_system=None)
    ticks = iter(range(0, 10_000, 7))
    progress = LiveProgress(console, total_steps=9, steps=STEPS, clock=lambda: float(next(ticks)))
    for ev in EVENTS:
        progress.event(ev)
    for ev in ODD:
        progress.event(ev)
    progress.close(RESULT)
    text = out.getvalue()
    for expected in ("rollout ro_1", "✓", "✗", "smoke", "3/3 OK", "finalize", "weights", "demo-chat-production 90%",
                     "max_error_rate", "5.00%", "2.00%", "FAIL", "skipped", "failed in 42.2 s: max_error_rate failed",
                     "opsctl rollout · 9 steps"):
        assert expected in text, expected


def test_live_panel_step_list_grows_from_events_alone():
    out = io.StringIO()
    progress = LiveProgress(Console(file=out, force_terminal=True, width=100), total_steps=None)
    progress.event(event(0, "deploy", "passed", "revision 3"))
    progress.event(event(1, "rollback", "info", "to revision 2"))
    progress.close({"rollout_id": "ro_9", "status": "succeeded", "elapsed_s": 3})
    text = out.getvalue()
    assert "revision 3" in text and "to revision 2" in text and "succeeded in 3.0 s" in text
