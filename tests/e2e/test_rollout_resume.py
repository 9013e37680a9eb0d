"""Interrupted rollouts: `opsctl rollout start` SIGKILLed at every step in turn, each time resumed by
`opsctl rollout resume`, finishes; a killed rollout blocks a second one (exit 2) until `abort` rolls it back;
a live driver notices an abort (here through `opsctl rollback`) within a second and rolls back itself.
"""

from __future__ import annotations

import time

import pytest

from opsctl.deploy.naming import release_name
from tests.e2e.rollout_support import (
    FAST,
    MODEL,
    events_of,
    pid_gone,
    read_until,
    result_of,
    run_until_event,
    stack_fixture,
    started,
    write_playbook,
)

ENV = "staging"
STABLE = release_name(MODEL, ENV)
CANARY = release_name(MODEL, ENV, "canary")
CANARY_STEPS = ["deploy", "wait_ready", "register", "smoke", "shadow", "weight", "weight", "weight", "finalize"]


@pytest.fixture
def stack(gateway_factory, tmp_path):
    yield from stack_fixture(gateway_factory, tmp_path)


def _steps(*steps: str) -> str:
    return "\n".join(f"  - {s}" for s in steps)


def _restored(stack, urls: list[str]) -> None:
    """Routing as before the rollout: the stable endpoint alone at its weight; no canary release."""
    assert [(e["url"], e["release"], e["weight"], e["status"], e["mirror_percent"])
            for e in stack.endpoints(MODEL, ENV)] == [(urls[0], STABLE, 100, "ready", 0.0)]
    assert stack.history(CANARY) == [] and stack.pids(CANARY) == []
    assert [r.status for r in stack.history(STABLE)] == ["deployed"]


def test_a_rollout_killed_at_every_step_in_turn_finishes_with_resume(stack):
    stack.deploy_stable(ENV, "v1")
    with stack.load(ENV, rate=40) as load:
        proc = stack.popen("rollout", "start", MODEL, "--env", ENV, "--version", "v2", *FAST, "--output", "json")
        for step in range(len(CANARY_STEPS)):
            run_until_event(proc, started(step))
            rollout = stack.newest_rollout(MODEL, ENV)
            assert (rollout["status"], rollout["step"], rollout["phase"]) == ("running", step, "started")
            proc = stack.popen("rollout", "resume", MODEL, "--env", ENV, "--output", "json")
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:] + err[-2000:]
    assert result_of(out)["status"] == "succeeded"
    for kind in ("unary", "stream"):
        assert load.total(kind) > 100 and load.errors(kind) == 0, (kind, load.counts, load.failures[:5])

    rollout = stack.newest_rollout(MODEL, ENV)
    assert rollout["status"] == "succeeded"
    begun = [e["step"] for e in rollout["events"] if e["phase"] == "started" and e["name"] != "rollback"]
    assert begun == [s for step in range(len(CANARY_STEPS)) for s in (step, step)]  # killed once, resumed once
    assert [e["name"] for e in rollout["events"] if e["phase"] == "passed"] == CANARY_STEPS
    # one stable revision serves v2 (a finalize killed mid-upgrade leaves a failed one before it)
    history = stack.history(STABLE)
    assert [(r.status, r.app_version) for r in history if r.status != "failed"] == [("superseded", "v1"),
                                                                                   ("deployed", "v2")]
    endpoints = stack.endpoints(MODEL, ENV)
    assert [(e["release"], e["weight"], e["status"]) for e in endpoints] == [(STABLE, 100, "ready")]
    assert stack.history(CANARY) == [] and stack.pids(CANARY) == []
    deployed = history[-1].revision
    running = stack.deployer.pid_files.read(STABLE)
    assert running and {p.revision for p in running} == {deployed}  # nothing leaked from killed runs


def test_a_killed_rollout_blocks_another_until_abort_rolls_it_back(stack, tmp_path):
    urls = stack.deploy_stable(ENV, "v1")
    playbook = write_playbook(tmp_path / "short.yaml", _steps("deploy", "wait_ready", "register", "weight: 10",
                                                              "weight: 50", "weight: 100", "finalize"))
    with stack.load(ENV, rate=40, stream=False) as load:
        proc = stack.popen("rollout", "start", MODEL, "--env", ENV, "--version", "v2", "--playbook", str(playbook),
                           "--output", "json")
        events = run_until_event(proc, started(4))  # weight 50: the canary takes 10 % now
        rollout_id = events[0]["rollout_id"]
        canary_pids = stack.pids(CANARY)
        assert canary_pids

        second = stack.opsctl("rollout", "start", MODEL, "--env", ENV, "--version", "v3", *FAST)
        assert second.returncode == 2, second.stdout + second.stderr
        assert second.stdout == "" and len(second.stderr.splitlines()) == 1
        assert rollout_id in second.stderr and f"opsctl rollout resume {MODEL} --env {ENV}" in second.stderr
        assert "opsctl rollout abort" in second.stderr

        aborted = stack.opsctl("rollout", "abort", MODEL, "--env", ENV, "--output", "json")
        load.answered()
    assert aborted.returncode == 0, aborted.stdout[-3000:] + aborted.stderr
    assert result_of(aborted.stdout)["status"] == "aborted"
    assert load.total("unary") > 50 and load.errors("unary") == 0, (load.counts, load.failures[:5])
    rollout = stack.rollout(rollout_id)
    assert rollout["status"] == "aborted" and "aborted by pid" in rollout["reason"]
    _restored(stack, urls)
    assert all(pid_gone(p) for p in canary_pids)


def test_a_live_rollout_is_aborted_by_opsctl_rollback_within_a_second(stack, tmp_path):
    urls = stack.deploy_stable(ENV, "v1")
    playbook = write_playbook(tmp_path / "paused.yaml", _steps("deploy", "wait_ready", "register", "weight: 10",
                                                               "pause: 120", "weight: 100", "finalize"))
    proc = stack.popen("rollout", "start", MODEL, "--env", ENV, "--version", "v2", "--playbook", str(playbook),
                       "--set", "analysis.min_requests=0", "--set", "analysis.interval_s=0.5", "--output", "json")
    try:
        events = read_until(proc, started(4))
        asked = time.monotonic()
        rollback = stack.opsctl("rollback", MODEL, "--env", ENV, "--output", "json")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rollback.returncode == 0, rollback.stdout[-3000:] + rollback.stderr
    assert result_of(rollback.stdout)["status"] == "aborted"
    assert time.monotonic() - asked < 15
    # the driver itself rolled back and says so, exit 1
    assert proc.returncode == 1, out[-2000:] + err[-2000:]
    result = result_of(out)
    assert result["status"] == "aborted" and result["rollout_id"] == events[0]["rollout_id"]
    assert any(e.get("name") == "rollback" and e.get("phase") == "passed" for e in events_of(out))
    _restored(stack, urls)


def test_an_abort_after_finalize_upgraded_stable_rolls_stable_back(stack, tmp_path):
    stack.deploy_stable(ENV, "v1")
    playbook = write_playbook(tmp_path / "short.yaml", _steps("deploy", "register", "weight: 100", "finalize"))
    with stack.load(ENV, rate=40, stream=False) as load:
        proc = stack.popen("rollout", "start", MODEL, "--env", ENV, "--version", "v2", "--playbook", str(playbook),
                           "--set", "analysis.min_requests=0", "--set", "analysis.interval_s=0.3", "--output", "json")
        run_until_event(proc, lambda e: e.get("name") == "finalize" and e.get("phase") == "progress"
                        and "routed" in e.get("message", ""))
        assert [(r.status, r.app_version) for r in stack.history(STABLE)] == [("superseded", "v1"),
                                                                             ("deployed", "v2")]
        upgraded = stack.pids(STABLE)
        aborted = stack.opsctl("rollout", "abort", MODEL, "--env", ENV, "--output", "json")
        load.answered()
    assert aborted.returncode == 0, aborted.stdout[-3000:] + aborted.stderr
    assert load.total("unary") > 20 and load.errors("unary") == 0, (load.counts, load.failures[:5])
    # stable went back to v1 in a new revision, which alone is routed to and runs
    history = stack.history(STABLE)
    assert [(r.revision, r.status, r.app_version) for r in history] == [
        (1, "superseded", "v1"), (2, "superseded", "v2"), (3, "deployed", "v1")]
    endpoints = stack.endpoints(MODEL, ENV)
    assert [(e["url"], e["release"], e["weight"], e["status"]) for e in endpoints] == [
        (stack.deployer.endpoints(STABLE)[0], STABLE, 100, "ready")]
    assert stack.history(CANARY) == [] and stack.pids(CANARY) == []
    assert {p.revision for p in stack.deployer.pid_files.read(STABLE)} == {3}
    assert all(pid_gone(p) for p in upgraded)
