"""`opsctl promote` and `opsctl rollback` end to end on the LocalDeployer.

Promotion to production needs --approve (exit 2, nothing touched) and a proven, healthy source: it is refused
(exit 1) while staging has no succeeded rollout or its release is down, and passes once both hold. A rollback
to an earlier revision moves the traffic to it under load without a failed request.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from opsctl.deploy.naming import release_name
from tests.e2e.rollout_support import FAST, MODEL, pid_gone, result_of, stack_fixture, write_playbook
from tests.support import wait_for

SHORT = "\n".join(f"  - {s}" for s in ("deploy", "wait_ready", "register", "weight: 100",
                                        "finalize: {drain_timeout_s: 5}"))
QUICK = ["--set", "analysis.min_requests=0", "--set", "analysis.interval_s=0.5"]


@pytest.fixture
def stack(gateway_factory, tmp_path):
    yield from stack_fixture(gateway_factory, tmp_path)


def _roll_out(stack, tmp_path, env: str, version: str) -> None:
    """A quick rollout of `version` in `env` (no traffic needed: min_requests 0)."""
    playbook = write_playbook(tmp_path / "short.yaml", SHORT)
    out = stack.opsctl("rollout", "start", MODEL, "--env", env, "--version", version, "--playbook", str(playbook),
                       *QUICK)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr


def _error_line(out, code: int) -> str:
    assert out.returncode == code, (out.returncode, out.stdout[-2000:], out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


def test_promotion_to_production_needs_approve_and_a_proven_healthy_source(stack, tmp_path):
    stack.deploy_stable("staging", "v1")
    stack.deploy_stable("production", "v1")
    production = release_name(MODEL, "production")

    line = _error_line(stack.opsctl("promote", MODEL, "--from", "staging", "--to", "production"), 2)
    assert "needs --approve" in line
    assert stack.admin.get("/admin/v1/rollouts", model=MODEL) == []  # nothing was touched

    refused = stack.opsctl("promote", MODEL, "--from", "staging", "--to", "production", "--approve")
    assert refused.returncode == 1 and "promotion refused" in refused.stdout
    assert f"{MODEL} has no rollout in staging" in refused.stdout

    _roll_out(stack, tmp_path, "staging", "v2")
    staging = release_name(MODEL, "staging")
    [pid] = stack.pids(staging)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not stack.deployer.status(staging).ready, timeout=10, what="staging down")
    refused = stack.opsctl("promote", MODEL, "--from", "staging", "--to", "production", "--approve",
                           "--output", "json")
    assert refused.returncode == 1
    result = result_of(refused.stdout)
    assert result["status"] == "failed" and f"release {staging} is not ready in staging" in result["reason"]
    assert stack.admin.get("/admin/v1/rollouts", model=MODEL, env="production") == []

    stack.deployer.ensure_running(staging)
    wait_for(lambda: all(e["healthy"] for e in stack.admin.get("/admin/v1/analysis", model=MODEL,
                                                                 env="staging")["endpoints"]),
             timeout=10, what="staging healthy again")
    with stack.load("production", rate=40, stream=False) as load:
        out = stack.opsctl("promote", MODEL, "--from", "staging", "--to", "production", "--approve", *FAST,
                           "--output", "json")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr
    assert result_of(out.stdout)["status"] == "succeeded"
    assert load.total("unary") > 50 and load.errors("unary") == 0, (load.counts, load.failures[:5])
    rollout = stack.newest_rollout(MODEL, "production")
    assert (rollout["kind"], rollout["version"], rollout["status"]) == ("promote", "v2", "succeeded")
    history = stack.history(production)
    assert (history[-1].status, history[-1].app_version) == ("deployed", "v2")
    # the production profile stays production's: two pods, not staging's one
    assert len([p for p in stack.deployer.pid_files.read(production) if p.revision == history[-1].revision]) == 2
    assert [e["release"] for e in stack.endpoints(MODEL, "production")] == [production, production]


def test_rollback_to_a_revision_moves_traffic_without_a_failed_request(stack, tmp_path):
    stack.deploy_stable("staging", "v1")
    _roll_out(stack, tmp_path, "staging", "v2")
    staging = release_name(MODEL, "staging")
    assert [(r.revision, r.app_version, r.status) for r in stack.history(staging)] == [
        (1, "v1", "superseded"), (2, "v2", "deployed")]
    v2_pids = stack.pids(staging)

    with stack.load("staging", rate=40) as load:
        load.answered()
        started = time.monotonic()
        out = stack.opsctl("rollback", MODEL, "--env", "staging", "--to-revision", "1", "--output", "json")
        took = time.monotonic() - started
        load.answered()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr
    assert result_of(out.stdout)["status"] == "succeeded"
    assert took < 10
    for kind in ("unary", "stream"):
        assert load.total(kind) > 20 and load.errors(kind) == 0, (kind, load.counts, load.failures[:5])
    history = stack.history(staging)
    assert [(r.revision, r.app_version, r.status) for r in history][-1] == (3, "v1", "deployed")
    [endpoint] = stack.endpoints(MODEL, "staging")
    assert (endpoint["url"], endpoint["weight"], endpoint["status"]) == (
        stack.deployer.endpoints(staging)[0], 100, "ready")
    assert all(pid_gone(p) for p in v2_pids)

    # without --to-revision: the one before the current (2, v2)
    out = stack.opsctl("rollback", MODEL, "--env", "staging")
    assert out.returncode == 0, out.stdout + out.stderr
    assert [(r.revision, r.app_version) for r in stack.history(staging)][-1] == (4, "v2")


def test_rollback_bad_input_exits_2_with_one_line(stack):
    stack.deploy_stable("staging", "v1")
    stack.admin.post("/admin/v1/models", {"name": "no-release", "environment": "staging"})
    assert "has no revision 7 (revisions: 1)" in _error_line(
        stack.opsctl("rollback", MODEL, "--env", "staging", "--to-revision", "7"), 2)
    assert "no earlier revision" in _error_line(stack.opsctl("rollback", MODEL, "--env", "staging"), 2)
    assert "unknown model 'ghost' in staging" in _error_line(stack.opsctl("rollback", "ghost", "--env",
                                                                          "staging"), 2)
    assert "unknown environment 'qa'" in _error_line(stack.opsctl("rollback", MODEL, "--env", "qa"), 2)
    assert "--to-revision must be" in _error_line(stack.opsctl("rollback", MODEL, "--env", "staging",
                                                               "--to-revision", "0"), 2)
    assert "no-release has no release in staging" in _error_line(
        stack.opsctl("rollback", "no-release", "--env", "staging"), 2)
    assert [r.revision for r in stack.history(release_name(MODEL, "staging"))] == [1]
