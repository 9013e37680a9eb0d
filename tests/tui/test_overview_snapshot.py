"""The overview at 120×40 over fixed data, and its stale marker after the gateway went away (replayed).

`fixtures/overview.jsonl` was recorded from a real `opsctl up` stack by `fixtures/record_overview.py`
(five minutes of changing traffic: demo-chat, demo-embed, flaky-chat with 10 % errors, broken-chat with no
listening pod; one `/admin/v1/fleet` answer every 20 s and one spend report; the answers' endpoint_list
dropped). Replayed, its clock is the
recording's, so rates, sparklines and the freshness line are the same on every run.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

from tests.tui.conftest import SIZE
from tui.app import FleetgateApp
from tui.source import ReplaySource
from tui.widgets.fleet_table import ALERT_STYLES, FleetTable
from tui.widgets.status import Freshness

FIXTURE = Path(__file__).parent / "fixtures" / "overview.jsonl"
FLEET_ANSWERS = sum(1 for line in FIXTURE.read_text().splitlines() if '"get":"/admin/v1/fleet"' in line)


def replay_app(path: Path = FIXTURE) -> FleetgateApp:
    # refresh_s: no timer refresh during the test; the run_before below refreshes by hand
    return FleetgateApp(ReplaySource(path), refresh_s=3600.0, screen="overview", follow_events=False)


async def refreshed(pilot, times: int) -> None:
    """Refresh the overview `times` times, each to its end (the replay hands out one answer per refresh)."""
    app = pilot.app
    await app.workers.wait_for_complete()
    for _ in range(times):
        app.screen.refresh_data()
        await app.workers.wait_for_complete()
        await pilot.pause()


def test_overview_snapshot(snap_compare):
    async def run_before(pilot) -> None:
        await refreshed(pilot, FLEET_ANSWERS)  # the mount's refresh read the first answer; one spare
        assert pilot.app.screen.query_one(FleetTable).row_count == 4

    assert snap_compare(replay_app(), terminal_size=SIZE, run_before=run_before)


async def test_stale_marker_keeps_the_time_of_the_last_good_refresh(tmp_path):
    """Two good answers, then the gateway is unreachable (a recorded 503): STALE, last good at the 2nd's time."""
    lines = FIXTURE.read_text().splitlines()
    header, fleet = json.loads(lines[0]), [json.loads(line) for line in lines if '"get":"/admin/v1/fleet"' in line]
    spend = next(json.loads(line) for line in lines if '"get":"/admin/v1/usage/spend' in line)
    down = {"t": fleet[1]["t"] + 2.0, "get": "/admin/v1/fleet", "status": 503,
            "error": "cannot reach the gateway at http://127.0.0.1:1: connection refused"}
    recording = tmp_path / "down.jsonl"
    recording.write_text("\n".join(json.dumps(e) for e in (header, fleet[0], spend, fleet[1], down)) + "\n")
    app = replay_app(recording)
    async with app.run_test(size=SIZE) as pilot:
        await refreshed(pilot, 2)
        freshness = app.screen.query_one(Freshness)
        rendered = str(freshness.render())
        assert freshness.has_class("-stale") and "STALE" in rendered and "connection refused" in rendered
        last_good = datetime.fromisoformat(header["recorded_at"]) + timedelta(seconds=fleet[1]["t"])
        assert f"last good refresh {last_good:%H:%M:%S}" in rendered
        assert app.screen.query_one(FleetTable).row_count == 4  # the last good figures stay on screen
        assert [n.title for n in app._notifications] == ["Overview failed"]


async def test_rows_without_a_ready_endpoint_or_with_errors_are_coloured():
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await refreshed(pilot, FLEET_ANSWERS)
        table = app.screen.query_one(FleetTable)
        styles = {key: str(table.get_cell(key, "model").style) for key in
                  ("broken-chat@production", "flaky-chat@production", "demo-chat@production")}
        assert styles == {"broken-chat@production": ALERT_STYLES["down"],  # its only pod does not listen
                          "flaky-chat@production": ALERT_STYLES["errors"],  # 10 % of answers are 500
                          "demo-chat@production": ""}
        assert table.get_cell("flaky-chat@production", "err").plain == "8.0"
        totals = str(app.screen.query_one("#fleet-totals").render())
        assert "endpoints 3/4 ready" in totals and "2 need attention" in totals


async def test_a_failed_spend_report_warns_once_and_keeps_the_screen_live(tmp_path):
    """The lake could not answer (a recorded 502): a warning, the spend column empty, the rest live."""
    lines = FIXTURE.read_text().splitlines()
    fleet = [line for line in lines if '"get":"/admin/v1/fleet"' in line][:3]
    spend = json.loads(next(line for line in lines if '"get":"/admin/v1/usage/spend' in line))
    failed = {"t": spend["t"], "get": spend["get"], "status": 502,
              "error": "the usage lake could not answer: no such table"}
    recording = tmp_path / "no-lake.jsonl"
    recording.write_text("\n".join([lines[0], fleet[0], json.dumps(failed), *fleet[1:]]) + "\n")
    app = replay_app(recording)
    async with app.run_test(size=SIZE) as pilot:
        await refreshed(pilot, 3)
        assert [(n.title, n.severity) for n in app._notifications] == [("today's spend could not be read", "warning")]
        assert not app.screen.query_one(Freshness).has_class("-stale")
        assert app.screen.query_one(FleetTable).get_cell("demo-chat@production", "spend").plain == "–"
