"""The overview screen against a real stack: traffic shows as req/s, endpoints as ready/total, outages as STALE."""

from __future__ import annotations

import asyncio
import threading

from rich.text import Text

from tests.support import free_port
from tests.tui.conftest import SIZE
from tests.tui.stack import CHAT_MODEL
from tests.tui.pilot import until
from tui.app import FleetgateApp
from tui.screens.overview import OverviewScreen
from tui.source import LiveSource
from tui.widgets.fleet_table import DASH, FleetTable
from tui.widgets.status import Freshness

CHAT_ROW = f"{CHAT_MODEL}@production"


def cell(app: FleetgateApp, row: str, column: str) -> str:
    table = app.screen.query_one(FleetTable)
    value = table.get_cell(row, column)
    return value.plain if isinstance(value, Text) else str(value)




async def test_traffic_shows_as_requests_per_second_with_ready_endpoints(fleet_stack):
    app = FleetgateApp(fleet_stack.source(), refresh_s=1.0, screen="overview")
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            assert fleet_stack.chat(2) == [200, 200]
            stop.wait(0.05)

    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(app.screen, OverviewScreen)
        await until(pilot, lambda: cell(app, CHAT_ROW, "ready") == "1/1", what="demo-chat's ready/total")
        sender = asyncio.create_task(asyncio.to_thread(traffic))
        try:
            await until(pilot, lambda: cell(app, CHAT_ROW, "rps") not in (DASH, "0.0"), what="req/s > 0")
            await until(pilot, lambda: cell(app, CHAT_ROW, "latency") != f"{DASH}/{DASH}", what="latency")
        finally:
            stop.set()
            await sender
        assert float(cell(app, CHAT_ROW, "rps")) > 0
        assert cell(app, CHAT_ROW, "err") == "0.0"
        assert cell(app, CHAT_ROW, "queue") != "" and cell(app, CHAT_ROW, "trend").strip()
        assert "live" in str(app.screen.query_one(Freshness).render())
        totals = str(app.screen.query_one("#fleet-totals").render())
        assert "ready" in totals and "req/s" in totals

        # enter on a row opens the registry
        app.screen.query_one(FleetTable).focus()
        await pilot.press("enter")
        await pilot.pause()
        assert app.current_mode == "registry"


async def test_an_unreachable_gateway_shows_stale_and_never_crashes(fleet_stack):
    closed = f"http://127.0.0.1:{free_port()}"
    source = LiveSource(fleet_stack.settings(), closed, fleet_stack.admin_token, timeout=1.0)
    app = FleetgateApp(source, refresh_s=0.3, screen="overview", follow_events=False)
    async with app.run_test(size=SIZE) as pilot:
        freshness = app.screen.query_one(Freshness)
        await until(pilot, lambda: freshness.has_class("-stale"), what="the STALE marker")
        rendered = str(freshness.render())
        assert "STALE" in rendered and "last good refresh never" in rendered
        notes = [n for n in app._notifications if n.severity == "error"]
        assert len(notes) == 1  # once per failure streak, not once per refresh
        await pilot.pause(1.0)  # a few more failed refreshes
        assert app.is_running and app.screen.query_one(FleetTable).row_count == 0
        assert len([n for n in app._notifications if n.severity == "error"]) == 1
