"""The registry screen against a real `opsctl up` stack and a second simulator pod (`opsctl sim serve`).

demo-chat gets a second endpoint (its own release, so the gateway's per-release counters tell the two
apart): disabling it from the console must stop the gateway routing to it while the first keeps serving.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest
from textual.widgets import DataTable, Footer, Input

from tests.support import free_port, port_open, wait_for
from tests.tui.conftest import SIZE
from tests.tui.stack import CHAT_MODEL, FleetStack
from tests.tui.pilot import until
from tui.app import FleetgateApp
from tui.screens.registry import RegistryScreen
from tui.source import LiveSource
from tui.widgets.confirm import ConfirmScreen
from tui.widgets.status import Freshness

ENV = "production"


@pytest.fixture(scope="module")
def second_pod(fleet_stack: FleetStack) -> Iterator[dict]:
    """A simulator pod registered as demo-chat's second endpoint (its own release); deleted afterwards."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "opsctl", "sim", "serve", "--model", CHAT_MODEL,
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_open(port), timeout=20, what="the simulator pod")
        release = f"regtest-{uuid.uuid4().hex[:6]}"
        with fleet_stack.admin() as admin:
            r = admin.post("/admin/v1/models", json={"name": CHAT_MODEL, "environment": ENV, "release": release,
                                                     "endpoint": f"http://127.0.0.1:{port}", "weight": 100})
            assert r.status_code in (200, 201), r.text
            endpoint = r.json()["endpoint"]
        try:
            yield {**endpoint, "release": release}
        finally:
            with fleet_stack.admin() as admin:
                admin.delete(f"/admin/v1/endpoints/{endpoint['id']}")
    finally:
        proc.terminate()
        proc.wait(10)


def analysis(stack: FleetStack) -> dict:
    with stack.admin() as admin:
        r = admin.get("/admin/v1/analysis", params={"model": CHAT_MODEL, "env": ENV})
        r.raise_for_status()
        return r.json()


def routed_status(stack: FleetStack, endpoint_id: str) -> str:
    """The status the gateway's router holds for the endpoint (what routing obeys)."""
    return next(e["status"] for e in analysis(stack)["endpoints"] if e["id"] == endpoint_id)


def live_requests(stack: FleetStack, release: str) -> int:
    return analysis(stack)["releases"].get(release, {}).get("live", {}).get("requests", 0)




def table(app: FleetgateApp, name: str) -> DataTable:
    return app.screen.query_one(f"#registry-{name}", DataTable)


def row_keys(app: FleetgateApp, name: str) -> list[str]:
    return [str(k.value) for k in table(app, name).rows]


def cell(app: FleetgateApp, endpoint_id: str, column: int) -> str:
    return str(table(app, "endpoints").get_row(endpoint_id)[column])


async def filter_to(pilot, app: FleetgateApp, text: str) -> None:
    await pilot.press("slash")
    box = app.screen.query_one("#registry-filter", Input)
    assert box.has_focus
    box.value = text
    await pilot.press("enter")


def notifications(app: FleetgateApp) -> list:
    return list(app._notifications)


async def test_filter_narrows_models_and_escape_clears(fleet_stack):
    app = FleetgateApp(fleet_stack.source(), refresh_s=1.0, screen="registry")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(row_keys(app, "models")) >= 2, "the models")
        everything = row_keys(app, "models")
        await pilot.press("slash")
        await pilot.press(*"embed")
        await until(pilot, lambda: row_keys(app, "models") == [f"{ENV}/demo-embed"], "the filtered list")
        await pilot.press("escape")
        await until(pilot, lambda: row_keys(app, "models") == everything, "the whole list again")
        assert app.screen.query_one("#registry-filter", Input).value == ""


async def test_disable_from_the_console_stops_routing_then_enable_restores(fleet_stack, second_pod):
    endpoint_id, release = second_pod["id"], second_pod["release"]
    app = FleetgateApp(fleet_stack.source(), refresh_s=1.0, screen="registry")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: row_keys(app, "models"), "the models")
        await filter_to(pilot, app, release)
        await until(pilot, lambda: row_keys(app, "endpoints") == [endpoint_id], "the second endpoint alone")
        # The details pane shows its health history from the gateway.
        await until(pilot, lambda: "observed" in app.export_screenshot(),
                         "the endpoint's health history")
        titles = [command.title for command in app.get_system_commands(app.screen)]
        assert f"Registry: disable endpoint {endpoint_id}" in titles  # the palette offers the same actions
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        assert endpoint_id in app.screen.question and second_pod["url"] in app.screen.question
        await pilot.press("y")
        await until(pilot, lambda: routed_status(fleet_stack, endpoint_id) == "disabled", "the gateway to obey")
        await until(pilot, lambda: cell(app, endpoint_id, 3) == "disabled", "the row to show it")

        before = live_requests(fleet_stack, release)
        assert fleet_stack.chat(20) == [200] * 20  # the first endpoint keeps serving
        assert live_requests(fleet_stack, release) == before  # none reached the disabled one

        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        await pilot.press("y")
        await until(pilot, lambda: routed_status(fleet_stack, endpoint_id) == "ready", "the gateway to obey")
        await until(pilot, lambda: cell(app, endpoint_id, 3) == "ready", "the row to show it")
        assert fleet_stack.chat(30) == [200] * 30
        assert live_requests(fleet_stack, release) > before  # routed to again (1 in 2^30 to fail by chance)


async def test_live_registry_event_updates_the_row_before_the_next_refresh(fleet_stack, second_pod):
    """Refresh every 60 s: only the `registry` event from /admin/v1/events can bring the change in time."""
    endpoint_id = second_pod["id"]
    app = FleetgateApp(fleet_stack.source(), refresh_s=60.0, screen="registry")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: row_keys(app, "models"), "the models")
        await filter_to(pilot, app, second_pod["release"])
        await until(pilot, lambda: row_keys(app, "endpoints") == [endpoint_id], "the second endpoint")
        with fleet_stack.admin() as admin:
            # The console says it is connected on its first event: announce no-op changes until it is.
            for _ in range(50):
                if app.events_connected:
                    break
                admin.patch(f"/admin/v1/endpoints/{endpoint_id}", json={"weight": 100}).raise_for_status()
                await pilot.pause(0.2)
            assert app.events_connected
            r = admin.patch(f"/admin/v1/endpoints/{endpoint_id}", json={"status": "draining"})
            assert r.status_code == 200, r.text
        try:
            await until(pilot, lambda: cell(app, endpoint_id, 3) == "draining", "the live update", timeout=10)
        finally:
            with fleet_stack.admin() as admin:
                admin.patch(f"/admin/v1/endpoints/{endpoint_id}", json={"status": "ready"}).raise_for_status()


async def test_read_only_console_hides_and_refuses_disable(fleet_stack, second_pod):
    endpoint_id = second_pod["id"]
    app = FleetgateApp(fleet_stack.source(), refresh_s=1.0, screen="registry", read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: row_keys(app, "models"), "the models")
        await filter_to(pilot, app, second_pod["release"])
        await until(pilot, lambda: row_keys(app, "endpoints") == [endpoint_id], "the second endpoint")
        footer_actions = {key.action for key in app.screen.query_one(Footer).query("FooterKey")}
        assert "filter" in footer_actions
        assert not footer_actions & {"disable", "enable", "drain"}
        await pilot.press("d")
        await pilot.pause(0.3)
        assert isinstance(app.screen, RegistryScreen)  # no confirmation was asked
        assert routed_status(fleet_stack, endpoint_id) == "ready"
        titles = [command.title for command in app.get_system_commands(app.screen)]
        assert not [t for t in titles if "disable endpoint" in t] and "Registry: filter" in titles


async def test_action_on_an_endpoint_deleted_meanwhile_is_a_notification(fleet_stack):
    release = f"regtest-gone-{uuid.uuid4().hex[:6]}"
    with fleet_stack.admin() as admin:
        r = admin.post("/admin/v1/models", json={"name": CHAT_MODEL, "environment": ENV, "release": release,
                                                 "endpoint": f"http://127.0.0.1:{free_port()}", "weight": 0,
                                                 "status": "disabled"})
        assert r.status_code in (200, 201), r.text
        endpoint_id = r.json()["endpoint"]["id"]
    app = FleetgateApp(fleet_stack.source(), refresh_s=30.0, screen="registry", follow_events=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: row_keys(app, "models"), "the models")
        await filter_to(pilot, app, release)
        await until(pilot, lambda: row_keys(app, "endpoints") == [endpoint_id], "the endpoint")
        with fleet_stack.admin() as admin:
            assert admin.delete(f"/admin/v1/endpoints/{endpoint_id}").status_code == 200
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        await pilot.press("y")
        failed = await until(pilot, lambda: [n for n in notifications(app) if n.severity == "error"],
                                  "the failure notification")
        assert "not found" in failed[0].message and endpoint_id in failed[0].message
        assert isinstance(app.screen, RegistryScreen) and app.is_running


async def test_gateway_down_marks_the_screen_stale_without_crashing(fleet_stack):
    source = LiveSource(fleet_stack.settings(), f"http://127.0.0.1:{free_port()}", "no-token", timeout=1.0)
    app = FleetgateApp(source, refresh_s=1.0, screen="registry", follow_events=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: [n for n in notifications(app) if n.severity == "error"], "a notification")
        assert app.screen.query_one(Freshness).error
        assert row_keys(app, "models") == []
        await pilot.press("d")  # nothing selected: a warning, not a crash
        await pilot.pause(0.2)
        assert isinstance(app.screen, RegistryScreen)


def test_bad_status_patch_is_refused_by_the_gateway(fleet_stack, second_pod):
    """The API the screen calls names the bad field (the console only ever sends ready/disabled/draining)."""
    with httpx.Client(base_url=fleet_stack.url, headers={"Authorization": f"Bearer {fleet_stack.admin_token}"}) as c:
        r = c.patch(f"/admin/v1/endpoints/{second_pod['id']}", json={"status": "paused"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "status"
