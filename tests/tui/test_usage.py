"""The Usage screen against a real `opsctl up` stack and its local lake: the spend report shows the demo org,
the SQL console agrees with `opsctl sql`, refuses bad SQL and writes without crashing, keeps a 0600
history, and exports CSV exactly as `opsctl sql --format csv` does.
"""

from __future__ import annotations

import csv
import io
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static, TextArea

from tests.tui.conftest import SIZE
from tests.tui.stack import FleetStack
from tests.tui.pilot import until
from tui.app import FleetgateApp
from tui.source import ReplaySource
from tui.widgets.report_export import ExportPathScreen
from tui.widgets.sql_console import SqlHistory, history_path

DEADLINE_S = 20.0
FIXTURE = Path(__file__).parent / "fixtures" / "usage.jsonl"


@pytest.fixture(scope="module")
def traffic(fleet_stack: FleetStack) -> str:
    """A few chats from the demo key, flushed to the lake; the demo org's id."""
    assert set(fleet_stack.chat(3)) == {200}
    fleet_stack.flush_usage()
    with fleet_stack.admin() as admin:
        orgs = admin.get("/admin/v1/organizations").json()
    assert len(orgs) == 1, orgs  # `opsctl up` makes one demo org; this module creates none
    return orgs[0]["id"]


def opsctl_sql(stack: FleetStack, query: str, tmp_path: Path) -> str:
    """`opsctl sql --format csv` on the stack's lake (its state dir via the environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    env["FLEETGATE_STATE_DIR"] = str(stack.state_dir)
    done = subprocess.run([sys.executable, "-m", "opsctl", "sql", "--format", "csv", query], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def wait_until(pilot: Pilot, predicate: Callable[[], object], what: str) -> None:
    await until(pilot, predicate, what, timeout=DEADLINE_S)


def cells(app: FleetgateApp, table_id: str) -> list[list[str]]:
    table = app.screen.query_one(table_id, DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def columns(app: FleetgateApp, table_id: str) -> list[str]:
    return [str(c.label) for c in app.screen.query_one(table_id, DataTable).columns.values()]


def text_of(app: FleetgateApp, widget_id: str) -> str:
    return str(app.screen.query_one(widget_id, Static).render())


def notified(app: FleetgateApp, text: str) -> bool:
    return any(text in f"{n.title} {n.message}" for n in app._notifications)


async def run_sql(pilot: Pilot, query: str, *, key: str = "ctrl+enter", type_it: bool = False) -> None:
    """Open the SQL tab, put `query` in the editor (typed key by key if `type_it`: slow), run it with `key`."""
    app = pilot.app
    if app.screen.query_one("TabbedContent").active != "sql":
        await pilot.press("ctrl+t")
    editor = app.screen.query_one("#sql-editor", TextArea)
    editor.focus()
    editor.clear()
    if type_it:
        await pilot.press(*query)
    else:
        editor.load_text(query)
    assert editor.text == query
    await pilot.press(key)


def sql_done(app: FleetgateApp) -> bool:
    status = text_of(app, "#sql-status")
    return status != "running…" and (" row" in status or app.screen.query_one(
        "#sql-status").has_class("-error"))


async def test_spend_report_shows_the_demo_orgs_row(fleet_stack, traffic):
    app = FleetgateApp(fleet_stack.source(), refresh_s=1.0, screen="usage")
    async with app.run_test(size=SIZE) as pilot:
        def demo_row() -> list[str] | None:
            return next((row for row in cells(app, "#report-results") if row[0] == traffic), None)

        deadline = time.monotonic() + DEADLINE_S
        while demo_row() is None and time.monotonic() < deadline:
            await pilot.click("#report-run")  # the lake may see the flushed file a moment later
            await pilot.pause(0.3)
        row = demo_row()
        assert row is not None, cells(app, "#report-results")
        assert int(row[1].replace(",", "")) >= 3  # requests
        assert "spend by org" in text_of(app, "#report-status")
        # a grouping by model: demo-chat appears
        app.screen.query_one("#report-by").value = "model"
        await wait_until(pilot, lambda: any(r[0] == "demo-chat" for r in cells(app, "#report-results")),
                         "the spend by model")
        app.screen.query_one("#report-kind").value = "latency"  # keeps the grouping: latency by model
        await wait_until(pilot, lambda: "latency_p95_ms" in columns(app, "#report-results"), "the latency report")
        assert any(r[0] == "demo-chat" for r in cells(app, "#report-results"))
        app.screen.query_one("#report-kind").value = "errors"
        await wait_until(pilot, lambda: "error_rate" in columns(app, "#report-results"), "the errors report")


async def test_bad_date_input_is_an_inline_error(fleet_stack, traffic):
    app = FleetgateApp(fleet_stack.source(), refresh_s=1.0, screen="usage")
    async with app.run_test(size=SIZE) as pilot:
        since = app.screen.query_one("#report-since", Input)
        since.value = "yesterday"
        since.focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: "--since" in text_of(app, "#report-error"), "the inline error")
        assert since.has_class("-invalid")
        until = app.screen.query_one("#report-until", Input)
        since.value, until.value = "2026-01-05", "2026-01-01"
        await pilot.click("#report-run")
        await wait_until(pilot, lambda: "must be after since" in text_of(app, "#report-error"), "the range error")
        assert until.has_class("-invalid")
        await pilot.click("#preset-30d")
        await wait_until(pilot, lambda: text_of(app, "#report-error") == "" and " row" in text_of(app, "#report-status"),
                         "the preset's report")
        assert since.value == "30d" and until.value == ""


async def test_sql_count_matches_opsctl_sql(fleet_stack, traffic, tmp_path):
    query = "SELECT count(*) AS n FROM usage"
    app = FleetgateApp(fleet_stack.source(), refresh_s=1.0, screen="usage")
    async with app.run_test(size=SIZE) as pilot:
        await run_sql(pilot, query, type_it=True)
        await wait_until(pilot, lambda: sql_done(app), "the query")
        shown = cells(app, "#sql-results")
    expected = list(csv.reader(io.StringIO(opsctl_sql(fleet_stack, query, tmp_path))))
    assert expected[0] == ["n"]
    assert int(expected[1][0]) >= 3
    assert [[c.replace(",", "") for c in row] for row in shown] == expected[1:]


BAD_QUERIES = [("SELEC count(*) FROM usage", "syntax"), ("SELECT nope FROM usage", "nope"),
               ("DELETE FROM usage", "DELETE")]


async def test_bad_sql_and_writes_notify_and_the_app_lives(fleet_stack, traffic):
    app = FleetgateApp(fleet_stack.source(), refresh_s=1.0, screen="usage")
    async with app.run_test(size=SIZE) as pilot:
        for number, (query, reason) in enumerate(BAD_QUERIES, start=1):
            await run_sql(pilot, query, key="ctrl+r")
            await wait_until(pilot, lambda n=number: sum("query failed" in str(m.title) for m in app._notifications) >= n,
                             f"the error notification of {query!r}")
            assert app.screen.query_one("#sql-status").has_class("-error")
            assert reason.lower() in text_of(app, "#sql-status").lower()
        await run_sql(pilot, "SELECT 1 AS alive FROM usage LIMIT 1", key="f5")  # still working
        await wait_until(pilot, lambda: "alive" in columns(app, "#sql-results"), "the next query")
        assert not app.screen.query_one("#sql-status").has_class("-error")
        await run_sql(pilot, "SELECT i FROM range(1500) t(i)")  # more rows than the table shows
        await wait_until(pilot, lambda: "1,500 rows" in text_of(app, "#sql-status"), "the big result")
        assert "showing the first 1,000" in text_of(app, "#sql-status")
        assert app.screen.query_one("#sql-results", DataTable).row_count == 1000


async def test_copy_to_a_file_is_refused(fleet_stack, traffic, tmp_path):
    target = tmp_path / "stolen.csv"
    app = FleetgateApp(fleet_stack.source(), refresh_s=1.0, screen="usage")
    async with app.run_test(size=SIZE) as pilot:
        await run_sql(pilot, f"COPY (SELECT * FROM usage) TO '{target}'")
        await wait_until(pilot, lambda: notified(app, "query refused"), "the refusal")
        assert app.is_running
    assert not target.exists()


async def test_history_recall_and_persistence(fleet_stack, traffic):
    first, second = "SELECT count(*) AS hist_a FROM usage", "SELECT count(*) AS hist_b FROM usage"
    app = FleetgateApp(fleet_stack.source(), refresh_s=1.0, screen="usage")
    async with app.run_test(size=SIZE) as pilot:
        for query, alias in ((first, "hist_a"), (second, "hist_b")):
            await run_sql(pilot, query)
            await wait_until(pilot, lambda a=alias: a in columns(app, "#sql-results"), "the query")
        editor = app.screen.query_one("#sql-editor", TextArea)
        editor.load_text("SELECT 42 AS draft")
        await pilot.press("ctrl+up")
        assert editor.text == second
        await pilot.press("ctrl+up")
        assert editor.text == first
        await pilot.press("ctrl+down", "ctrl+down")
        assert editor.text == "SELECT 42 AS draft"
    path = history_path(fleet_stack.source())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SqlHistory(path).load()[-2:] == [first, second]
    # a new console starts with that history
    app = FleetgateApp(fleet_stack.source(), refresh_s=1.0, screen="usage")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+t")
        await wait_until(pilot, lambda: app.screen.query_one("#sql-history").option_count >= 2, "the history")
        await pilot.press("ctrl+up")
        assert app.screen.query_one("#sql-editor", TextArea).text == second


async def test_csv_export_matches_opsctl_sql(fleet_stack, traffic, tmp_path):
    query = "SELECT org_id, model, count(*) AS n, sum(cost_micros) AS micros FROM usage GROUP BY ALL ORDER BY ALL"
    out = tmp_path / "export.csv"
    app = FleetgateApp(fleet_stack.source(), refresh_s=1.0, screen="usage")
    async with app.run_test(size=SIZE) as pilot:
        await run_sql(pilot, query)
        await wait_until(pilot, lambda: sql_done(app), "the query")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, ExportPathScreen), "the path prompt")
        path_input = app.screen.query_one("#export-path", Input)
        assert path_input.value.startswith("fleetgate-query-") and path_input.value.endswith(".csv")
        path_input.value = str(out)
        await pilot.press("enter")
        await wait_until(pilot, lambda: notified(app, "wrote"), "the export")
        # exporting to the same file again is refused, not an overwrite
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, ExportPathScreen), "the path prompt")
        app.screen.query_one("#export-path", Input).value = str(out)
        await pilot.press("enter")
        await wait_until(pilot, lambda: notified(app, "already exists"), "the refusal")
    rows = list(csv.reader(out.open(newline="")))
    assert rows[0] == ["org_id", "model", "n", "micros"]
    assert rows == list(csv.reader(io.StringIO(opsctl_sql(fleet_stack, query, tmp_path))))


async def test_a_replay_without_a_lake_notifies_instead_of_crashing():
    """A real failing component: a ReplaySource has no lake unless given settings."""
    app = FleetgateApp(ReplaySource(FIXTURE), refresh_s=1.0, screen="usage")
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: notified(app, "holds no usage lake"), "the report's notification")
        assert "failed" in text_of(app, "#report-status")
        await run_sql(pilot, "SELECT 1 AS x FROM usage")
        await wait_until(pilot, lambda: notified(app, "query failed"), "the query's notification")
        await pilot.press("x")  # typed into the editor, not the export key
        assert app.screen.query_one("#sql-editor", TextArea).text == "xSELECT 1 AS x FROM usage"  # at the cursor
        assert not isinstance(app.screen, ExportPathScreen)
        await pilot.press("ctrl+s")  # the SQL tab has no result: a warning, no prompt
        await wait_until(pilot, lambda: notified(app, "nothing to export"), "the warning")
        assert app.is_running


def test_the_screen_module_loads_no_duckdb_or_pyarrow():
    """Visiting Usage must not stall the event loop on heavy imports: they load in the workers."""
    code = ("import sys, tui.screens.usage; "
            "print(sorted(m for m in ('duckdb', 'pyarrow', 'analytics_lake.query') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
