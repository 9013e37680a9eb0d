"""SVG snapshot of the orgs · keys · budgets screen at 120×40 over fixed data, and the recording's hygiene.

`fixtures/orgs.jsonl` was recorded from a real `opsctl up` stack by
`PYTHONPATH=. .venv/bin/python tests/tui/fixtures/record_orgs.py` (demo with a green budget, acme past
its soft limit with a key budget, globex without budget and its key revoked, initech exhausted), one
answer per request, no live events: the replay's clock and data are fixed, so the frame is too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.tui.conftest import SIZE
from tests.tui.pilot import settle
from tui.app import FleetgateApp
from tui.source import ReplaySource

RECORDING = Path(__file__).parent / "fixtures" / "orgs.jsonl"


def replay_app() -> FleetgateApp:
    # A long refresh period: the frame is drawn from the first reads, with no refresh racing the snapshot.
    return FleetgateApp(ReplaySource(RECORDING), refresh_s=60.0, screen="orgs", follow_events=False)




async def show_acme(pilot) -> None:
    """acme (the first row, selected at start): its two keys; its prod key has its own daily budget."""
    await settle(pilot, "initech")
    await settle(pilot, "staging")  # the environment of acme's ci key: acme's keys are drawn


def test_orgs_snapshot(snap_compare):
    assert snap_compare(replay_app(), terminal_size=SIZE, run_before=show_acme)


def test_the_recording_holds_no_secret():
    """Key listings carry a display prefix only: no `key` field, nothing shaped like a whole secret."""
    text = RECORDING.read_text()
    assert '"key":' not in text
    assert not re.search(r"sk-fg-[A-Za-z0-9_-]{20,}", text)
    keys = next(json.loads(line)["body"] for line in text.splitlines()[1:] if '"/admin/v1/api-keys"' in line)
    assert keys and all(len(k["prefix"]) <= 12 for k in keys)
