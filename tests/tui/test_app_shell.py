"""The console's shell against a real stack: screens by key, the palette, live events, record → replay."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from gateway.errors import FleetgateError
from tests.support import free_port
from tests.tui.conftest import SIZE
from tests.tui.pilot import until
from tui.app import SCREENS, FleetgateApp
from tui.source import LiveSource, RecordingError, RecordingSource, ReplaySource




async def test_every_screen_opens_by_its_number_key(fleet_stack):
    app = FleetgateApp(fleet_stack.source(), refresh_s=1.0)
    async with app.run_test(size=SIZE) as pilot:
        for number, name in enumerate(SCREENS, start=1):
            await pilot.press(str(number))
            await pilot.pause()
            assert app.current_mode == name
        await until(pilot, lambda: app.events_connected, what="the event stream")


async def test_the_palette_offers_every_screen_and_no_mutation_when_read_only(fleet_stack):
    app = FleetgateApp(fleet_stack.source(), read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        titles = [command.title for command in app.get_system_commands(app.screen)]
        assert [f"Go to {title}" for title, _ in SCREENS.values()] == titles[:len(SCREENS)]
        for name in SCREENS:
            await app.switch_mode(name)
            await pilot.pause()
            actions = list(app.screen.palette_actions())
            offered = {command.title for command in app.get_system_commands(app.screen)}
            assert all(a.title not in offered for a in actions if a.mutating), name
        assert "read-only" in app.sub_title


async def test_a_viewers_token_turns_the_console_read_only(fleet_stack):
    """The role comes from /admin/v1/whoami: a viewer gets no mutating key, an admin keeps them."""
    with fleet_stack.admin() as admin:
        r = admin.post("/admin/v1/users", json={"name": "tui-viewer", "role": "viewer"})
        assert r.status_code == 201, r.text
        r = admin.post(f"/admin/v1/users/{r.json()['id']}/tokens", json={"expires_in": "1h"})
        assert r.status_code == 201, r.text
        token = r.json()["token"]
    app = FleetgateApp(LiveSource(fleet_stack.settings(), fleet_stack.url, token))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.read_only, what="read-only mode for a viewer")
        assert "user:tui-viewer is a viewer" in app.sub_title
        await app.switch_mode("registry")
        await pilot.pause()
        actions = app.screen.MUTATING_ACTIONS
        assert actions and all(app.screen.check_action(action, ()) is False for action in actions)
        offered = {command.title for command in app.get_system_commands(app.screen)}
        assert not any(a.title in offered for a in app.screen.palette_actions() if a.mutating)
    admin_app = FleetgateApp(fleet_stack.source())
    async with admin_app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: admin_app.screen is not None and admin_app.current_mode == "overview")
        await pilot.pause(0.5)
        assert not admin_app.read_only


async def test_live_events_are_recorded_and_a_recording_replays_the_same_answers(fleet_stack, tmp_path):
    """A registry change made by someone else arrives as a live event; `--record` keeps it and every answer,
    and `--replay` shows the same answers back, read-only, on the recording's clock."""
    path = tmp_path / "session.jsonl"
    source = RecordingSource(fleet_stack.settings(), path, fleet_stack.url, fleet_stack.admin_token)
    app = FleetgateApp(source, refresh_s=1.0)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.events_connected, what="the event stream")
        with fleet_stack.admin() as admin:
            assert admin.patch("/admin/v1/models/production/demo-chat", json={"max_tokens": 4096}).status_code == 200
        await until(pilot, lambda: '"event":"registry"' in path.read_text(), what="a recorded registry event")
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    answers = [e for e in entries[1:] if "get" in e]
    assert answers, "the screens' reads were recorded"
    assert fleet_stack.admin_token not in path.read_text()  # the token is never written
    replay = ReplaySource(path)
    first = answers[0]
    assert replay.get(first["get"].split("?")[0], **_params(first["get"])) == first["body"]
    recorded_at = datetime.fromisoformat(entries[0]["recorded_at"])
    assert replay.now() == recorded_at + timedelta(seconds=first["t"])  # the recording's clock
    with pytest.raises(FleetgateError, match="read-only"):
        replay.request("PATCH", "/admin/v1/endpoints/x", {"status": "disabled"})
    events = list(replay.events())
    assert any(type_ == "registry" for type_, _ in events)


def _params(key: str) -> dict[str, str]:
    if "?" not in key:
        return {}
    return dict(part.split("=", 1) for part in key.split("?", 1)[1].split("&"))


async def test_a_gateway_that_is_down_marks_the_screen_stale_and_the_app_stays_up(tmp_path, fleet_stack):
    source = LiveSource(fleet_stack.settings(), f"http://127.0.0.1:{free_port()}", "fg-nobody", timeout=1.0)
    app = FleetgateApp(source, refresh_s=0.5)
    async with app.run_test(size=SIZE) as pilot:
        from tui.widgets.status import Freshness

        await until(pilot, lambda: bool(app.screen.query_one(Freshness).error), what="the stale marker")
        assert "cannot reach the gateway" in app.screen.query_one(Freshness).error
        assert not app.events_connected
        await pilot.press("2")
        await pilot.pause()
        assert app.is_running


async def test_a_wrong_admin_token_is_a_notification_not_a_crash(fleet_stack):
    app = FleetgateApp(LiveSource(fleet_stack.settings(), fleet_stack.url, "fg-wrong-token"), refresh_s=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: any("forbidden (401)" in str(n.message) for n in app._notifications),
                     what="a 401 notification")
        assert app.is_running


@pytest.mark.parametrize(("text", "fragment"), [
    ("", "is not a TUI recording"),
    ("not json\n", "not JSON lines"),
    ('{"format": "fleetgate-tui-recording/1"}\n', "recorded_at"),
    ('{"format": "fleetgate-tui-recording/1", "recorded_at": "2026-11-30T00:00:00+00:00"}\n{"get": "/x"}\n',
     ":2: expected an object with a time"),
])
def test_a_bad_recording_is_refused_with_the_reason(tmp_path, text, fragment):
    path = tmp_path / "r.jsonl"
    path.write_text(text)
    with pytest.raises(RecordingError, match=fragment) as caught:
        ReplaySource(path)
    assert caught.value.status == 400
