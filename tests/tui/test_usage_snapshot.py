"""SVG snapshots of the Usage screen at 120×40 over a fixed lake: the spend report and the SQL console.

The lake is `analytics_lake.synthetic.synthetic_table` (seed 1: 240 requests of 4 orgs over the week from
2026-01-01T00:00Z) written to a tmp lake; `fixtures/usage.jsonl` is a hand-written recording that is
just the header, recorded_at 2026-01-08T12:00Z, so the replay's clock (and with it "since 7d") is fixed.
No gateway answer is needed: the Usage screen reads only the lake.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable, TextArea

from analytics_lake.synthetic import synthetic_table
from analytics_lake.writer import write_table
from gateway.settings import Settings
from gateway.usage import lake_config
from tests.tui.conftest import SIZE
from tui.app import FleetgateApp
from tui.source import ReplaySource

RECORDING = Path(__file__).parent / "fixtures" / "usage.jsonl"
T0_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
QUERY = "SELECT model, count(*) AS requests, sum(cost_micros) AS micros\nFROM usage\nGROUP BY ALL\nORDER BY ALL"


@pytest.fixture
def replay_app(tmp_path: Path) -> FleetgateApp:
    settings = Settings(state_dir=tmp_path / "state")
    table = synthetic_table(240, start_us=T0_US, span_hours=24 * 7, orgs=4, keys=8, seed=1)
    write_table(lake_config(settings), table, writer_id="synthetic", seq="0000000000000001")
    return FleetgateApp(ReplaySource(RECORDING, settings), refresh_s=60.0, screen="usage", follow_events=False)


async def _settle(pilot, table_id: str, column: str) -> None:
    """Until the table shows a result with `column` (and nothing is still running)."""
    for _ in range(200):
        table = pilot.app.screen.query_one(table_id, DataTable)
        if table.row_count and column in [str(c.label) for c in table.columns.values()]:
            break
        await pilot.pause(0.05)
    else:
        raise AssertionError(f"{table_id} never showed {column!r}")
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()


async def show_spend_report(pilot) -> None:
    """The default report: spend by org over the last 7 days of the replay's clock."""
    await _settle(pilot, "#report-results", "cost_usd")


async def show_sql_result(pilot) -> None:
    """The SQL tab after one query; focus moved to the results so no cursor blinks in the frame."""
    await pilot.press("ctrl+t")
    editor = pilot.app.screen.query_one("#sql-editor", TextArea)
    editor.load_text(QUERY)
    await pilot.press("ctrl+enter")
    await _settle(pilot, "#sql-results", "micros")
    pilot.app.screen.query_one("#sql-results", DataTable).focus()
    await pilot.pause()


def test_usage_reports_snapshot(snap_compare, replay_app):
    assert snap_compare(replay_app, terminal_size=SIZE, run_before=show_spend_report)


def test_usage_sql_snapshot(snap_compare, replay_app):
    assert snap_compare(replay_app, terminal_size=SIZE, run_before=show_sql_result)
