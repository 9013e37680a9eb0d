"""SVG snapshot of the registry screen at 120×40 over fixed data.

`fixtures/registry.jsonl` was recorded from a real `opsctl up` stack by
`python -m tests.tui.fixtures.registry_record` (demo-chat with its simulator pod plus a second
endpoint on a closed port, which the prober marked unhealthy), then pruned to one answer per
request at t=1.0 and no live events: the replay's clock and data are fixed, so the frame is too.
"""

from __future__ import annotations

from pathlib import Path

from tests.tui.conftest import SIZE
from tests.tui.pilot import settle
from tui.app import FleetgateApp
from tui.source import ReplaySource

RECORDING = Path(__file__).parent / "fixtures" / "registry.jsonl"


def replay_app() -> FleetgateApp:
    # A long refresh period: the frame is drawn from the first reads, with no refresh racing the snapshot.
    return FleetgateApp(ReplaySource(RECORDING), refresh_s=60.0, screen="registry", follow_events=False)




async def show_unhealthy_endpoint(pilot) -> None:
    """Select demo-chat's second endpoint (the unhealthy one) and wait for its health history."""
    await settle(pilot, "observed")
    pilot.app.screen.query_one("#registry-endpoints").focus()
    await pilot.press("down")
    await settle(pilot, "ClientConnectorError")


def test_registry_snapshot(snap_compare):
    assert snap_compare(replay_app(), terminal_size=SIZE, run_before=show_unhealthy_endpoint)
