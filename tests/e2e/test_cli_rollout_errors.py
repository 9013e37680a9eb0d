"""Bad input to the rollout commands: exit 2 with one line on stderr that says what is wrong (the playbook's
file:line for a malformed playbook), and nothing is created; an unreachable gateway is exit 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from opsctl.client import AdminClient
from tests.e2e.conftest import E2E_TOKEN
from tests.e2e.rollout_support import MODEL, REPO

V = ["--version", "v2"]


def _opsctl(*args: str, gateway: str = "http://127.0.0.1:9", state_dir: Path | None = None
            ) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    env.update(FLEETGATE_GATEWAY_URL=gateway, FLEETGATE_ADMIN_TOKEN=E2E_TOKEN)
    if state_dir is not None:
        env["FLEETGATE_STATE_DIR"] = str(state_dir)
    return subprocess.run([sys.executable, "-m", "opsctl", *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=REPO)


def _error_line(out: subprocess.CompletedProcess, code: int) -> str:
    assert out.returncode == code, (out.returncode, out.stdout[-2000:], out.stderr)
    assert out.stdout == "" and "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


@pytest.fixture
def bad_playbooks(tmp_path):
    good = (REPO / "playbooks" / "canary.yaml").read_text()
    files = {
        "not-yaml.yaml": "kind: canary\nsteps: [deploy\n",
        "unknown-key.yaml": good.replace("readiness_timeout_s: \"${readiness_timeout_s}\"\n",
                                         "readiness_timeout_s: \"${readiness_timeout_s}\"\nretries: 3\n"),
        "bad-weight.yaml": good.replace("  - weight: 50\n", "  - weight: 5\n"),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_bad_input_without_a_gateway_exits_2_naming_the_problem(bad_playbooks, tmp_path):
    p = bad_playbooks
    cases = [
        (["rollout", "start", MODEL, "--env", "qa", *V], "unknown environment 'qa'"),
        (["rollout", "start", MODEL, "--env", "staging"], "Missing option '--version'"),
        (["rollout", "start", MODEL, "--env", "staging", *V, "--playbook", str(p / "missing.yaml")],
         f"{p / 'missing.yaml'}: no such playbook file"),
        (["rollout", "start", MODEL, "--env", "staging", *V, "--playbook", str(p / "not-yaml.yaml")],
         f"{p / 'not-yaml.yaml'}:"),
        (["rollout", "start", MODEL, "--env", "staging", *V, "--playbook", str(p / "unknown-key.yaml")],
         f"{p / 'unknown-key.yaml'}:{_line_of(p / 'unknown-key.yaml', 'retries')}: retries"),
        (["rollout", "start", MODEL, "--env", "staging", *V, "--playbook", str(p / "bad-weight.yaml")],
         f"{p / 'bad-weight.yaml'}:{_line_of(p / 'bad-weight.yaml', 'weight: 5')}: steps[6]: weights must increase"),
        (["rollout", "start", MODEL, "--env", "staging", *V, "--set", "nope=1"], "nope"),
        (["rollout", "start", MODEL, "--env", "staging", *V, "--set", "novalue"], "novalue"),
        (["rollout", "start", MODEL, "--env", "staging", *V, "--set", "analysis.bogus=1"], "bogus"),
        (["rollout", "start", MODEL, "--env", "staging", *V, "--set", "analysis.interval_s=-1"], "interval_s"),
        (["rollout", "start", MODEL, "--env", "staging", *V, "--deployer", "nope"], "unknown deployer 'nope'"),
        (["rollout", "start", MODEL, "--env", "staging", *V, "--playbook", str(REPO / "playbooks" / "promote.yaml")],
         "a promote playbook"),
        (["rollout", "status", MODEL], "name the rollout: MODEL --env ENV, or --id ID"),
        (["rollout", "resume"], "name the rollout"),
        (["rollout", "abort", MODEL, "--env", "qa"], "unknown environment 'qa'"),
        (["promote", MODEL, "--from", "staging", "--to", "production"], "needs --approve"),
        (["promote", MODEL, "--from", "qa", "--to", "staging"], "unknown environment 'qa'"),
        (["promote", MODEL, "--from", "staging", "--to", "staging", "--approve"], "to itself"),
        (["rollback", MODEL, "--env", "staging", "--to-revision", "x"], "--to-revision"),
        (["playbook", "run", str(p / "missing.yaml")], "no such playbook file"),
        (["playbook", "run", str(REPO / "playbooks" / "canary.yaml")], "required params model, env, version"),
        (["playbook", "run", str(REPO / "playbooks" / "rollback.yaml"), "--set", "model=m", "--set", "env=staging",
          "--set", "to_revision=two"], "to_revision"),
    ]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda case: _opsctl(*case[0], state_dir=tmp_path / "state"), cases))
    for (args, fragment), out in zip(cases, outs):
        line = _error_line(out, 2)
        assert fragment in line, (args, line)
    assert not (tmp_path / "state").exists()  # nothing ran far enough to create state


def test_a_dry_run_prints_the_plan_and_touches_nothing(tmp_path):
    out = _opsctl("playbook", "run", str(REPO / "playbooks" / "canary.yaml"), "--set", f"model={MODEL}", "--set",
                  "env=staging", "--set", "version=v2", "--dry-run", state_dir=tmp_path / "state")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"canary of {MODEL} to version v2 in staging")
    assert [line.split(".")[0] for line in lines[1:]] == [str(i) for i in range(1, 10)]


def test_bad_input_against_a_gateway_exits_2_and_creates_nothing(gateway_factory, tmp_path):
    gateway = gateway_factory()
    with AdminClient(gateway.url, E2E_TOKEN) as admin:
        admin.post("/admin/v1/models", {"name": MODEL, "environment": "staging"})
        other = admin.post("/admin/v1/rollouts", {
            "model": "driven", "environment": "staging", "version": "v9", "kind": "canary", "playbook": "x",
            "spec": {}, "owner": {"host": "elsewhere.example", "pid": 4242}})
    cases = [
        (["rollout", "start", "ghost", "--env", "staging", *V], "unknown model 'ghost' in staging: register it"),
        (["rollout", "status", "--id", "ro_0000000000000000"], "unknown rollout 'ro_0000000000000000'"),
        (["rollout", "resume", "--id", "ro_0000000000000000"], "unknown rollout"),
        (["rollout", "abort", "--id", "ro_0000000000000000"], "unknown rollout"),
        (["rollout", "resume", MODEL, "--env", "staging"], f"no active rollout of {MODEL} in staging"),
        (["rollout", "abort", MODEL, "--env", "staging"], f"no active rollout of {MODEL} in staging"),
        (["rollout", "status", MODEL, "--env", "staging"], f"no rollout of {MODEL} in staging"),
        (["rollout", "resume", "driven", "--env", "staging"],
         f"rollout {other['id']} is driven by pid 4242 on elsewhere.example"),
        (["promote", "ghost", "--from", "staging", "--to", "development"], "unknown model 'ghost' in staging"),
    ]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda case: _opsctl(*case[0], gateway=gateway.url, state_dir=tmp_path / "cli"),
                             cases))
    for (args, fragment), out in zip(cases, outs):
        assert fragment in _error_line(out, 2), args
    with AdminClient(gateway.url, E2E_TOKEN) as admin:
        assert [r["id"] for r in admin.get("/admin/v1/rollouts")] == [other["id"]]
        assert admin.get(f"/admin/v1/rollouts/{other['id']}")["owner"] == {"host": "elsewhere.example", "pid": 4242}


def test_an_unreachable_gateway_exits_1(tmp_path):
    line = _error_line(_opsctl("rollout", "status", MODEL, "--env", "staging", state_dir=tmp_path), 1)
    assert "cannot reach the gateway at http://127.0.0.1:9" in line
