"""SVG snapshot of the rollouts screen at 120×40 over a recording of a real stack (fixtures/rollouts.jsonl).

How the recording was made (`python -m tests.tui.test_rollouts_snapshot record`, below): a real `opsctl up`,
a `RecordingSource` on it, client traffic from a thread, a quick canary of demo-chat production to v2 that
succeeded, then a second one to v3 (with a pause step) launched through opsctl/rollout/launch.py. While the v3
canary was at its register step the screen's two GETs (the list and the v3 record with its events) were
recorded, then the live `rollout` events until its pause step started; the v3 rollout was aborted afterwards
(not recorded). The file was trimmed to the header, those two answers and the events after them.

The snapshot replays the two answers, then feeds the recorded events to the screen in order (the replay's
events follow the answers, as they did live), so the frame shows the v3 rollout in its pause step with the
50 % window's gates and weights; the replay clock makes every time in the frame fixed.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.tui.conftest import SIZE
from tui.app import FleetgateApp
from tui.messages import FleetEvent
from tui.source import ReplaySource

FIXTURE = Path(__file__).parent / "fixtures" / "rollouts.jsonl"


def replay_app() -> FleetgateApp:
    return FleetgateApp(ReplaySource(FIXTURE), refresh_s=3600.0, screen="rollouts", follow_events=False)


async def feed_recorded_events(pilot: Any) -> None:
    """After the screen showed the recorded answers, deliver the recorded live events in order."""
    app = pilot.app
    deadline = time.monotonic() + 10
    while not app.screen.query_one("#rollouts").row_count and time.monotonic() < deadline:
        await pilot.pause(0.05)
    for type_, data in app.source.events():
        app.screen.post_message(FleetEvent(type_, data))
    await pilot.pause(0.2)
    await pilot.pause()


def test_rollouts_snapshot(snap_compare):
    assert snap_compare(replay_app(), terminal_size=SIZE, run_before=feed_recorded_events)


# --- making the recording ---------------------------------------------------------------------------------------

def record(out: Path) -> None:
    """Record a real stack as described in the module docstring (then trim the file by hand)."""
    import tempfile

    from opsctl.rollout.launch import LaunchTarget, launch
    from tests.tui.stack import start_stack
    from tests.tui.test_rollouts import PLAYBOOK, Traffic
    from tui.source import RecordingSource

    work = Path(tempfile.mkdtemp(prefix="fg-rollouts-rec-"))
    stack = start_stack(work / "state")
    try:
        quick, paused = work / "quick.yaml", work / "paused.yaml"
        quick.write_text(PLAYBOOK.format(pause=""))
        paused.write_text(PLAYBOOK.format(pause="  - pause: 60\n"))
        target = LaunchTarget(stack.url, stack.admin_token, (work / "state").resolve())
        with Traffic(stack):
            first = launch(["rollout", "start", "demo-chat", "--env", "production", "--version", "v2",
                            "--playbook", str(quick)], target)
            assert first.wait(90) == 0, first.lines()[-5:]
            source = RecordingSource(stack.settings(), out, stack.url, stack.admin_token)
            stop = threading.Event()

            def follow() -> None:
                for _type, data in source.events(("rollout",)):
                    if stop.is_set() or (data.get("name") == "pause" and data.get("phase") == "started"):
                        return

            thread = threading.Thread(target=follow, daemon=True)
            thread.start()
            second = launch(["rollout", "start", "demo-chat", "--env", "production", "--version", "v3",
                             "--playbook", str(paused)], target)
            rollout_id = _wait_for_step(stack, 2)
            source.get("/admin/v1/rollouts", limit=50)
            source.get(f"/admin/v1/rollouts/{rollout_id}")
            thread.join(60)
            stop.set()
            source.close()
            abort = launch(["rollout", "abort", "--id", rollout_id], target)
            abort.wait(60)
            second.wait(60)
    finally:
        stack.stop()


def _wait_for_step(stack: Any, step: int) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with stack.admin() as admin:
            active = admin.get("/admin/v1/rollouts", params={"active": "true"}).json()
        if active and active[0]["step"] >= step:
            return active[0]["id"]
        time.sleep(0.1)
    raise AssertionError(f"no active rollout reached step {step}")


if __name__ == "__main__" and sys.argv[1:] == ["record"]:
    record(FIXTURE.with_suffix(".raw.jsonl"))
