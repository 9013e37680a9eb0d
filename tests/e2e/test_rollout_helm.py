"""A canary on the HelmDeployer, against a stand-in `helm` binary that keeps release state and records its calls.

No cluster and no helm binary exist on the test machines. Like tests/unit/fixtures/helm/helm_binary.py, the
stand-in records every argv and the content of each `--values` file; unlike it, it keeps Helm's state (revisions,
statuses, the values each was rendered with), so a whole rollout can run against it: the test asserts the exact
upgrade / uninstall / rollback calls and values of a canary, and that a release stuck in pending-upgrade fails the
rollout up front with the command that recovers it. The gateway is a real process (registry, rollouts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from opsctl.client import AdminClient
from opsctl.deploy.naming import release_name
from tests.e2e.conftest import E2E_TOKEN
from tests.e2e.rollout_support import CHART, MODEL, REPO, result_of

ENV = "staging"
NAMESPACE = "fleetgate"
STABLE = release_name(MODEL, ENV)
CANARY = release_name(MODEL, ENV, "canary")
STABLE_URL = f"http://{STABLE}.{NAMESPACE}.svc.cluster.local:8000"
CANARY_URL = f"http://{CANARY}.{NAMESPACE}.svc.cluster.local:8000"
PLAYBOOK = """kind: canary
params: {model: null, env: null, version: null, deployer: helm, chart: helm/vllm-deployment}
values:
  model: {name: "${model}", source: {pvc: {claimName: weights}}}
readiness_timeout_s: 30
steps: [deploy, wait_ready, register, {weight: 50}, {weight: 100}, finalize]
analysis: {interval_s: 0.5, min_requests: 0, timeout_s: 10}
"""

STAND_IN = r'''
import json, sys
from pathlib import Path
import yaml

STATE = Path(__file__).with_name("state.json")
CALLS = Path(__file__).with_name("calls.jsonl")


def merge(base, top):
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def fail(message):
    sys.stderr.write(f"Error: {message}\n")
    sys.exit(1)


def main():
    argv = sys.argv[1:]
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--values"]
    with CALLS.open("a") as log:
        log.write(json.dumps({"argv": argv, "values": {f: Path(f).read_text() for f in files}}) + "\n")
    state = json.loads(STATE.read_text())
    command = argv[0] if argv[:1] != ["get"] else "get values"
    release = argv[1] if command != "get values" else argv[2]
    revisions = state.get(release)
    if command == "template":
        print("---")
    elif command == "upgrade":
        values = yaml.safe_load((Path(argv[2]) / "values.yaml").read_text())
        for f in files:
            values = merge(values, yaml.safe_load(Path(f).read_text()) or {})
        description = argv[argv.index("--description") + 1] if "--description" in argv else "Upgrade complete"
        add(state, release, values, description)
    elif command == "rollback":
        if not revisions:
            fail("release: not found")
        target = next(r for r in revisions if r["revision"] == int(argv[2]))
        add(state, release, target["values"], f"Rollback to {argv[2]}")
    elif not revisions:
        fail(f"uninstall: Release not loaded: {release}: release: not found" if command == "uninstall"
             else "release: not found")
    elif command == "history":
        print(json.dumps([{k: v for k, v in r.items() if k != "values"} for r in revisions]))
    elif command == "status":
        pod = {"metadata": {"name": f"{release}-0"}, "status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True"}], "containerStatuses": [{"restartCount": 0}]}}
        print(json.dumps({"name": release, "info": {"status": revisions[-1]["status"],
                                                     "resources": {"v1/Pod(related)": [pod]}}}))
    elif command == "get values":
        revision = int(argv[argv.index("--revision") + 1])
        print(json.dumps(next(r for r in revisions if r["revision"] == revision)["values"]))
    elif command == "uninstall":
        del state[release]
    STATE.write_text(json.dumps(state))


def add(state, release, values, description):
    revisions = state.setdefault(release, [])
    for r in revisions:
        if r["status"] == "deployed":
            r["status"] = "superseded"
    revisions.append({"revision": len(revisions) + 1, "updated": "2026-12-01T10:00:00Z", "status": "deployed",
                      "chart": "vllm-deployment-0.1.0", "app_version": "v0.11.0", "description": description,
                      "values": values})


main()
'''


class Helm:
    """The stand-in on PATH: `calls()` is what opsctl ran, `state()` what Helm would store."""

    def __init__(self, directory: Path, releases: dict) -> None:
        directory.mkdir()
        self.directory = directory
        (directory / "state.json").write_text(json.dumps(releases))
        script = directory / "helm"
        script.write_text(f"#!{sys.executable}\n{STAND_IN}")
        script.chmod(0o755)

    def calls(self) -> list[dict]:
        log = self.directory / "calls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def changes(self) -> list[list[str]]:
        """The calls that change something, as argv."""
        return [c["argv"] for c in self.calls() if c["argv"][0] in ("upgrade", "rollback", "uninstall")]

    def state(self) -> dict:
        return json.loads((self.directory / "state.json").read_text())


def _stable_values() -> dict:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for layer in (yaml.safe_load((CHART / f"values-{ENV}.yaml").read_text()), {"model": {"name": MODEL}}):
        values = _merge(values, layer)
    return values


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _revision(number: int, status: str, description: str) -> dict:
    return {"revision": number, "updated": "2026-11-01T09:00:00Z", "status": status,
            "chart": "vllm-deployment-0.1.0", "app_version": "v0.11.0", "description": description,
            "values": _stable_values()}


@pytest.fixture
def gateway(gateway_factory):
    gw = gateway_factory()
    with AdminClient(gw.url, E2E_TOKEN) as admin:
        admin.post("/admin/v1/models", {"name": MODEL, "environment": ENV, "endpoint": STABLE_URL,
                                        "release": STABLE})
    return gw


def _opsctl(gateway, helm: Helm, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    env.update(PATH=f"{helm.directory}{os.pathsep}{env['PATH']}", FLEETGATE_GATEWAY_URL=gateway.url,
               FLEETGATE_ADMIN_TOKEN=E2E_TOKEN, FLEETGATE_STATE_DIR=str(tmp_path / "state"))
    return subprocess.run([sys.executable, "-m", "opsctl", *args, "--deployer", "helm", "--namespace", NAMESPACE],
                          capture_output=True, text=True, timeout=120, env=env, cwd=REPO)


def test_a_canary_on_helm_makes_exactly_these_helm_changes(gateway, tmp_path):
    helm = Helm(tmp_path / "helm", {STABLE: [_revision(1, "deployed", "Install complete")]})
    playbook = tmp_path / "helm-canary.yaml"
    playbook.write_text(PLAYBOOK)
    out = _opsctl(gateway, helm, tmp_path, "rollout", "start", MODEL, "--env", ENV, "--version", "v2",
                  "--playbook", str(playbook), "--output", "json")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr
    rollout_id = result_of(out.stdout)["rollout_id"]
    marker = f"opsctl rollout {rollout_id} (canary to v2)"
    env_file = str(Path("helm/vllm-deployment") / f"values-{ENV}.yaml")
    target = ["--namespace", NAMESPACE]

    changes = helm.changes()
    assert [c[:2] for c in changes] == [["upgrade", CANARY], ["upgrade", STABLE], ["uninstall", CANARY]]
    for argv, release in zip(changes[:2], (CANARY, STABLE)):
        assert argv[:6] == ["upgrade", release, "helm/vllm-deployment", "--install", "--reset-values", "--values"]
        assert argv[6] == env_file and argv[7] == "--values"
        assert argv[9:] == ["--wait", "--atomic", "--timeout", "30s", "--description", marker, *target]
    assert changes[2] == ["uninstall", CANARY, "--wait", "--timeout", "900s", *target]
    upgrades = [c for c in helm.calls() if c["argv"][0] == "upgrade"]
    canary_values, stable_values = (json.loads(c["values"][c["argv"][8]]) for c in upgrades)
    engine_values = {"model": {"name": MODEL, "source": {"pvc": {"claimName": "weights"}}},
                     "registration": {"enabled": False}}
    assert canary_values == {**engine_values, "nameSuffix": "canary"}
    assert stable_values == engine_values
    # the canary's Service URL came from `helm get values` of its deployed revision
    assert ["get", "values", CANARY, "--all", "--revision", "1", "--output", "json", *target] in [
        c["argv"] for c in helm.calls()]

    state = helm.state()
    assert CANARY not in state
    assert [(r["revision"], r["status"], r["description"]) for r in state[STABLE]] == [
        (1, "superseded", "Install complete"), (2, "deployed", marker)]
    with AdminClient(gateway.url, E2E_TOKEN) as admin:
        endpoints = admin.get(f"/admin/v1/models/{ENV}/{MODEL}")["endpoints"]
        events = admin.get(f"/admin/v1/rollouts/{rollout_id}")["events"]
    assert [(e["url"], e["release"], e["weight"]) for e in endpoints] == [(STABLE_URL, STABLE, 100)]
    registered = [e for e in events if e["name"] == "register" and e["phase"] == "passed"]
    assert registered and [e["data"]["weights"] for e in events if e["name"] == "weight" and
                           e["phase"] == "passed"] == [{CANARY: 50.0, STABLE: 50.0}, {CANARY: 100.0, STABLE: 0.0}]

    # `opsctl rollback` on Helm: back to revision 1 with helm rollback
    out = _opsctl(gateway, helm, tmp_path, "rollback", MODEL, "--env", ENV)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr
    assert helm.changes()[3:] == [["rollback", STABLE, "1", "--wait", "--timeout", "900s", *target]]
    assert [(r["revision"], r["status"]) for r in helm.state()[STABLE]][-1] == (3, "deployed")


def test_a_stable_release_stuck_in_pending_upgrade_fails_the_rollout_with_the_recovery_command(gateway, tmp_path):
    helm = Helm(tmp_path / "helm", {STABLE: [_revision(1, "deployed", "Install complete"),
                                             _revision(2, "pending-upgrade", "Preparing upgrade")]})
    playbook = tmp_path / "helm-canary.yaml"
    playbook.write_text(PLAYBOOK)
    out = _opsctl(gateway, helm, tmp_path, "rollout", "start", MODEL, "--env", ENV, "--version", "v2",
                  "--playbook", str(playbook), "--output", "json")
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr
    result = result_of(out.stdout)
    assert result["status"] == "failed"
    assert f"the stable release {STABLE} is stuck in pending-upgrade (revision 2)" in result["reason"]
    assert f"recover with: helm rollback {STABLE} 1 --namespace {NAMESPACE}" in result["reason"]
    assert helm.changes() == []  # nothing was changed
    with AdminClient(gateway.url, E2E_TOKEN) as admin:
        endpoints = admin.get(f"/admin/v1/models/{ENV}/{MODEL}")["endpoints"]
    assert [(e["url"], e["weight"]) for e in endpoints] == [(STABLE_URL, 100)]
