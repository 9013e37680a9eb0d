"""The rollouts screen against a real `opsctl up` stack: forms, live progress from `/admin/v1/events`, abort and
rollback through detached `opsctl` processes, inline form errors, read-only mode, an unreachable gateway.

The stack's demo-chat production is a LocalDeployer release of simulator pods, so the rollouts launched here are
real: real canary processes, real analysis windows over the traffic a background thread sends.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console
from textual.widgets import Checkbox

from tests.support import free_port
from tests.tui.conftest import SIZE
from tests.tui.stack import CHAT_MODEL, FleetStack
from tests.tui.pilot import until
from tui.app import FleetgateApp
from tui.screens.rollouts import RolloutsScreen
from tui.source import LiveSource
from tui.widgets.rollout_detail import RolloutDetail
from tui.widgets.rollout_forms import PromoteForm, RollbackForm, RolloutForm, StartForm

ENV = "production"
# A short canary: one analysis window at 50 % over little traffic, then (optionally) a pause to abort in.
PLAYBOOK = """kind: canary
params:
  model: null
  env: null
  version: null
  deployer: local
  chart: helm/vllm-deployment
values:
  model: {{name: "${{model}}"}}
  replicaCount: 1
  local: {{engine: simulator}}
readiness_timeout_s: 30
steps:
  - deploy
  - wait_ready
  - register
  - weight: 50
{pause}  - weight: 100
  - finalize: {{drain_timeout_s: 10}}
analysis:
  interval_s: 1
  min_requests: 3
  timeout_s: 40
  max_error_rate: 0.5
  max_error_rate_increase: 0.5
  max_p95_latency_ratio: 20
  latency_slack_ms: 2000
  max_p95_ttft_ratio: 20
"""


@pytest.fixture(scope="module")
def playbooks(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("playbooks")
    quick, paused = folder / "quick.yaml", folder / "paused.yaml"
    quick.write_text(PLAYBOOK.format(pause=""))
    paused.write_text(PLAYBOOK.format(pause="  - pause: 120\n"))
    return {"quick": quick, "paused": paused}


class Traffic:
    """Chat requests to demo-chat production from a thread, so analysis windows see traffic."""

    def __init__(self, stack: FleetStack) -> None:
        self.stack = stack
        self.statuses: list[int] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(30)

    def _loop(self) -> None:
        body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        headers = {"Authorization": f"Bearer {self.stack.api_key}"}
        with httpx.Client(base_url=self.stack.url, headers=headers, timeout=30) as client:
            while not self.stop_event.is_set():
                self.statuses.append(client.post("/v1/chat/completions", json=body).status_code)
                time.sleep(0.05)


@pytest.fixture
def traffic(fleet_stack) -> Iterator[Traffic]:
    with Traffic(fleet_stack) as load:
        yield load


def panel_text(app: FleetgateApp) -> str:
    console = Console(width=110, record=True, file=open("/dev/null", "w"))  # noqa: SIM115 - closed below
    console.print(app.screen.query_one(RolloutDetail).content)
    console.file.close()
    return console.export_text()


async def wait_until(pilot: Any, predicate: Any, timeout: float, what: str) -> Any:
    return await until(pilot, predicate, what, timeout=timeout)


async def fill(pilot: Any, form: RolloutForm, **values: str) -> None:
    from textual.widgets import Input

    for field_id, value in values.items():
        form.query_one(f"#{field_id}", Input).value = value
    await pilot.pause()


async def submit(pilot: Any, form: RolloutForm) -> None:
    """Enter in a field submits the form, as an operator does."""
    form.query_one("#model").focus()
    await pilot.press("enter")


def rollouts_of(stack: FleetStack) -> list[dict[str, Any]]:
    with stack.admin() as admin:
        return admin.get("/admin/v1/rollouts", params={"model": CHAT_MODEL, "env": ENV}).json()


def notified(app: FleetgateApp, text: str) -> bool:
    return any(text in f"{n.title} {n.message}" for n in app._notifications)


async def start_rollout(pilot: Any, app: FleetgateApp, version: str, playbook: Path) -> str:
    await pilot.press("s")
    form = await wait_until(pilot, lambda: isinstance(app.screen, StartForm) and app.screen, 5, "the start form")
    await fill(pilot, form, model=CHAT_MODEL, env=ENV, version=version, playbook=str(playbook))
    await submit(pilot, form)
    rollouts = await wait_until(pilot, lambda: isinstance(app.screen, RolloutsScreen) and app.screen, 30,
                                "the form to close")
    return await wait_until(pilot, lambda: rollouts.selected_id if any(
        r.get("version") == version for r in rollouts.rollouts.values()) and
        rollouts.rollouts.get(rollouts.selected_id or "", {}).get("version") == version else None,
        30, f"the {version} rollout selected")


async def test_start_see_live_progress_abort_and_roll_back(fleet_stack, playbooks, traffic):
    """One quick rollout runs to the end with its gates shown live; a second is aborted mid-way (confirmed);
    then the model is rolled back to the revision before the first (confirmed)."""
    # refresh_s is long: what moves during the rollout arrives as live `rollout` events, not by polling
    app = FleetgateApp(fleet_stack.source(), refresh_s=60.0, screen="rollouts")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, RolloutsScreen)
        first = await start_rollout(pilot, app, "v2", playbooks["quick"])
        await wait_until(pilot, lambda: notified(app, f"{first} running"), 20, "the started notification")
        # step events arrive live: the 50 % window's gates, with values against thresholds, all passing
        await wait_until(pilot, lambda: any(e.get("data", {}).get("gates") for e in screen.events.get(first, [])),
                         40, "a step event with gate values")
        text = panel_text(app)
        assert "gates of 4. weight" in text and "min requests" in text and "p95 latency" in text, text
        assert "FAIL" not in text and "pass" in text, text
        assert "weights  demo-chat-production-canary " in text, text
        passed = [e for e in screen.events[first] if e.get("phase") == "passed" and e.get("name") == "weight"]
        assert passed[0]["data"]["weights"] == {"demo-chat-production-canary": 50.0, "demo-chat-production": 50.0}
        await wait_until(pilot, lambda: screen.rollouts[first]["status"] == "succeeded", 60, "the first rollout done")
        await wait_until(pilot, lambda: notified(app, "succeeded"), 15, "the finished notification")
        assert "succeeded" in str(screen.query_one("#rollouts").get_row(first))

        # a second rollout, aborted during its pause (with confirmation)
        second = await start_rollout(pilot, app, "v3", playbooks["paused"])
        # the driver is a detached opsctl: its own session, the token in its environment only, a log in the state dir
        driver = screen.launched[-1]
        table = screen.query_one("#rollouts")
        await wait_until(pilot, lambda: table.get_row_index(second) == table.cursor_row, 10, "the cursor on it")
        assert os.getsid(driver.pid) == driver.pid and driver.exit_code() is None
        assert fleet_stack.admin_token not in " ".join(driver.argv)
        assert driver.log.parent == (fleet_stack.state_dir / "logs" / "launched").resolve()
        await wait_until(pilot, lambda: screen.rollouts[second].get("step") == 4, 40, "the pause step")
        await pilot.press("a")
        await wait_until(pilot, lambda: app.screen.query("#confirm-yes"), 5, "the abort confirmation")
        await pilot.press("y")
        await wait_until(pilot, lambda: screen.rollouts[second]["status"] == "aborted", 40, "the abort")
        assert "aborted" in panel_text(app)
        await wait_until(pilot, lambda: notified(app, "abort " + second), 20, "the abort command's end")

        # rollback to the revision before the first rollout (opsctl up's), confirmed
        await pilot.press("b")
        form = await wait_until(pilot, lambda: isinstance(app.screen, RollbackForm) and app.screen, 5, "the form")
        await fill(pilot, form, model=CHAT_MODEL, env=ENV, revision="1")
        await submit(pilot, form)
        await wait_until(pilot, lambda: app.screen.query("#confirm-yes"), 10, "the rollback confirmation")
        await pilot.press("y")
        await wait_until(pilot, lambda: notified(app, "rollback of demo-chat in production finished"), 40,
                         "the rollback")
    with fleet_stack.admin() as admin:
        release = admin.get("/admin/v1/releases/demo-chat-production").json()
    # revisions: 1 opsctl up's, 2 the first rollout's v2, 3 the rollback to revision 1's version
    assert (release["revision"], release["version"], release["status"]) == (3, "simulator", "deployed"), release
    assert traffic.statuses and set(traffic.statuses) == {200}, set(traffic.statuses)
    statuses = {r["version"]: r["status"] for r in rollouts_of(fleet_stack)}
    assert statuses == {"v2": "succeeded", "v3": "aborted"}, statuses


async def test_bad_form_input_is_shown_inline_and_starts_nothing(fleet_stack):
    before = len(rollouts_of(fleet_stack))
    app = FleetgateApp(fleet_stack.source(), refresh_s=1.0, screen="rollouts")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("s")
        form = await wait_until(pilot, lambda: isinstance(app.screen, StartForm) and app.screen, 5, "the form")
        error = form.query_one("#form-error")
        cases = [({"model": CHAT_MODEL, "env": "prod", "version": "v9"}, "env must be one of"),
                 ({"model": CHAT_MODEL, "env": ENV, "version": ""}, "version is required"),
                 ({"model": "no-such-model", "env": ENV, "version": "v9"}, "unknown model 'no-such-model'"),
                 ({"model": CHAT_MODEL, "env": ENV, "version": "v9", "set": "analysis.interval_s"},
                  "NAME=VALUE"),
                 ({"model": CHAT_MODEL, "env": ENV, "version": "v9", "set": "analysis.nope=3"},
                  "unknown analysis field 'nope'"),
                 ({"model": CHAT_MODEL, "env": ENV, "version": "v9", "playbook": "/nonexistent.yaml"},
                  "no such playbook file")]
        for values, expected in cases:
            await fill(pilot, form, **{"set": "", "playbook": "", **values})
            await submit(pilot, form)
            await wait_until(pilot, lambda: expected in str(error.content), 10,
                             f"{expected!r} for {values} (shown: {str(error.content)!r})")
            assert app.screen is form
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, RolloutsScreen)

        # promotion: production needs the approve box; the source environment must have the model
        await pilot.press("p")
        form = await wait_until(pilot, lambda: isinstance(app.screen, PromoteForm) and app.screen, 5, "the form")
        error = form.query_one("#form-error")
        await fill(pilot, form, model=CHAT_MODEL, **{"from": "staging", "to": ENV})
        await submit(pilot, form)
        await wait_until(pilot, lambda: "needs --approve" in str(error.content), 10, "the approval error")
        assert app.focused is form.query_one("#approve")
        await pilot.press("space")  # tick the focused approve box
        assert form.query_one("#approve", Checkbox).value
        await submit(pilot, form)
        await wait_until(pilot, lambda: "unknown model 'demo-chat' in staging" in str(error.content), 10,
                         f"the unknown source model (shown: {str(error.content)!r})")
        await pilot.press("escape")
        await pilot.pause()
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Start a rollout", "Promote a release", "Abort the selected rollout", "Roll back a model"} <= titles
    assert len(rollouts_of(fleet_stack)) == before


async def test_read_only_hides_and_refuses_the_actions(fleet_stack):
    app = FleetgateApp(fleet_stack.source(), read_only=True, refresh_s=1.0, screen="rollouts")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        keys = {key for key, active in app.screen.active_bindings.items() if active.enabled}
        assert not {"s", "p", "a", "b"} & keys, keys
        for key in "spab":
            await pilot.press(key)
            await pilot.pause()
            assert isinstance(app.screen, RolloutsScreen)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert "Start a rollout" not in titles and "Go to Rollouts" in titles


async def test_an_unreachable_gateway_is_a_notification_and_a_stale_marker(fleet_stack):
    source = LiveSource(fleet_stack.settings(), f"http://127.0.0.1:{free_port()}", "token", timeout=1.0)
    app = FleetgateApp(source, refresh_s=1.0, screen="rollouts", follow_events=False)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app._notifications and True, 10, "a notification")
        assert app.screen.query_one("Freshness").error
        # the start form reports the unreachable gateway inline, nothing crashes
        await pilot.press("s")
        form = await wait_until(pilot, lambda: isinstance(app.screen, StartForm) and app.screen, 5, "the form")
        await fill(pilot, form, model=CHAT_MODEL, env=ENV, version="v9")
        await submit(pilot, form)
        error = form.query_one("#form-error")
        await wait_until(pilot, lambda: str(error.content) not in ("", "checking…"), 10, "the check")
        assert "127.0.0.1" in str(error.content) or "connect" in str(error.content).lower(), str(error.content)


def test_launch_arguments_and_environment_are_checked_before_anything_starts(tmp_path):
    """The launcher's own rules (no stack needed): argv from form values, the token only in the environment."""
    from gateway.errors import InvalidRequest
    from opsctl.rollout.launch import LaunchTarget, promote_argv, rollback_argv

    target = LaunchTarget("http://127.0.0.1:1", "secret-token", tmp_path)
    env = target.environment({"PATH": "/bin", "FLEETGATE_ADMIN_TOKEN": "other", "FLEETGATE_DEPLOYER": "helm"})
    assert env == {"PATH": "/bin", "FLEETGATE_GATEWAY_URL": "http://127.0.0.1:1",
                   "FLEETGATE_STATE_DIR": str(tmp_path), "FLEETGATE_ADMIN_TOKEN": "secret-token"}
    assert rollback_argv(CHAT_MODEL, ENV, " 2 ") == ["rollback", CHAT_MODEL, "--env", ENV, "--to-revision", "2"]
    assert promote_argv(CHAT_MODEL, "staging", ENV, True)[-1] == "--approve"
    for call, param in ((lambda: rollback_argv(CHAT_MODEL, ENV, "0"), "revision"),
                        (lambda: rollback_argv(CHAT_MODEL, ENV, "x"), "revision"),
                        (lambda: rollback_argv("demo chat", ENV), "model"),
                        (lambda: promote_argv(CHAT_MODEL, ENV, ENV, True), "to"),
                        (lambda: promote_argv(CHAT_MODEL, "staging", ENV, False), "approve")):
        with pytest.raises(InvalidRequest) as caught:
            call()
        assert caught.value.param == param
