"""`opsctl deployment status|history` as processes: the real Helm engine (helm-python-sdk) reading release
records from a stand-in Kubernetes API, a stand-in `helm` binary for the pods view, and a real gateway for
the registry's side; with `--deployer local` (the default), a LocalDeployer release of simulator processes
whose history lives in that gateway. Bad input exits 2 and an unreachable cluster or gateway exits 1, each
with one line on stderr.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from opsctl.deploy import DeployerOptions
from opsctl.deploy.local import LocalDeployer
from tests.e2e.conftest import E2E_TOKEN
from tests.helm.support import VLLM_CHART
from tests.support import free_port, wait_for
from tests.unit.fixtures.helm.helm_binary import HelmBinary, Reply
from tests.unit.fixtures.helm.kube_api import KubeApi

FIXTURES = Path(__file__).parents[1] / "unit" / "fixtures" / "helm"
NO_HELM = "/nonexistent"  # PATH without a helm binary: the SDK engine runs


def _opsctl(*args: str, **env: str) -> subprocess.CompletedProcess:
    """opsctl deployment with the Helm deployer (FLEETGATE_DEPLOYER=helm unless `env` says otherwise)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    base.update(PATH=NO_HELM, FLEETGATE_GATEWAY_URL="http://127.0.0.1:9", FLEETGATE_ADMIN_TOKEN=E2E_TOKEN,
                FLEETGATE_DEPLOYER="helm")
    return subprocess.run([sys.executable, "-m", "opsctl", "deployment", *args], capture_output=True, text=True,
                          timeout=60, env={**base, **env})


def _error_line(out: subprocess.CompletedProcess, code: int) -> str:
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert out.stdout == "" and "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


def _fields(table: str) -> dict[str, str]:
    """The `key  value` lines of the status table (continuation lines are left out)."""
    fields = {}
    for line in table.split("\n\n")[0].splitlines():
        if not line.startswith(" "):
            key, _, value = line.partition("  ")
            fields[key.strip()] = value.strip()
    return fields


@pytest.fixture
def kubeconfig(tmp_path):
    """A stand-in API server holding fixtures/helm/releases.json, and a kubeconfig pointing at it."""
    with KubeApi(json.loads((FIXTURES / "releases.json").read_text())) as api:
        path = tmp_path / "kubeconfig"
        path.write_text(api.kubeconfig(namespace="fleetgate"))
        yield str(path)


@pytest.fixture
def unreachable_kubeconfig(tmp_path):
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": f"https://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "gone", "user": {"token": "t"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "gone"}}]}))
    return str(path)


@pytest.mark.parametrize("args, fragment", [
    (["status", "qwen:7b", "--env", "qa"], "unknown environment 'qa': expected one of development, staging, "
                                           "production"),
    (["history", "::", "--env", "production"], "model name '::' has no letters or digits"),
    (["status", "x" * 50, "--env", "production"], "(61 characters); Helm allows 53"),
    (["status", "qwen:7b", "--env", "production", "--deployer", "nope"], "unknown deployer 'nope'"),
    (["history", "qwen:7b", "--env", "production", "--deployer", "nope"], "unknown deployer 'nope'"),
    (["status", "qwen:7b", "--env", "production", "--chart", "/nonexistent/chart"],
     "chart directory /nonexistent/chart not found"),
    (["history", "qwen:7b"], "Missing option '--env'"),
    (["history", "qwen:7b", "--env", "production", "-o", "xml"], "Invalid value for '--output'"),
    (["history", "qwen:7b", "--env", "qa", "--deployer", "local"], "unknown environment 'qa'"),
    (["status", "::", "--env", "production", "--deployer", "local"], "model name '::' has no letters or digits"),
])
def test_bad_input_is_one_line_and_exit_2(args, fragment, unreachable_kubeconfig):
    """Checked before any cluster or gateway is contacted (both are unreachable here)."""
    assert fragment in _error_line(_opsctl(*args, KUBECONFIG=unreachable_kubeconfig), 2)


def test_deployer_kind_from_the_environment(unreachable_kubeconfig):
    out = _opsctl("history", "qwen:7b", "--env", "production", KUBECONFIG=unreachable_kubeconfig,
                  FLEETGATE_DEPLOYER="nope")
    assert "unknown deployer 'nope'" in _error_line(out, 2)


@pytest.mark.parametrize("command", ["status", "history"])
def test_an_unreachable_cluster_is_one_line_and_exit_1(command, unreachable_kubeconfig):
    out = _opsctl(command, "qwen:7b", "--env", "production", "--namespace", "fleetgate",
                  KUBECONFIG=unreachable_kubeconfig)
    line = _error_line(out, 1)
    assert line.startswith("error: cannot reach the Kubernetes API (the current kube context, namespace "
                           "fleetgate): kubernetes cluster unreachable: ")
    assert "connection refused" in line


def test_history_of_a_release(kubeconfig):
    out = _opsctl("history", "meta-llama/Llama-3.1-8B", "--env", "staging", "-o", "json", KUBECONFIG=kubeconfig)
    assert out.returncode == 0, out.stderr
    revisions = json.loads(out.stdout)
    assert [(r["revision"], r["status"], r["chart"]) for r in revisions] == [
        (1, "superseded", "vllm-deployment-0.1.0"), (2, "failed", "vllm-deployment-0.2.0"),
        (3, "deployed", "vllm-deployment-0.1.0")]
    assert revisions[1]["description"].endswith("failed: context deadline exceeded")
    assert set(revisions[0]) == {"revision", "status", "chart", "app_version", "updated", "description"}
    table = _opsctl("history", "meta-llama/Llama-3.1-8B", "--env", "staging", KUBECONFIG=kubeconfig).stdout
    header, *rows = table.splitlines()
    assert header.split() == ["REVISION", "STATUS", "CHART", "APP_VERSION", "UPDATED", "DESCRIPTION"]
    assert rows[2].split()[:3] == ["3", "deployed", "vllm-deployment-0.1.0"] and rows[2].endswith("Rollback to 1")


def test_history_of_a_release_that_does_not_exist(kubeconfig):
    out = _opsctl("history", "phi-3", "--env", "production", KUBECONFIG=kubeconfig)
    # the namespace is the kube context's (helm-python-sdk alone would look in "default")
    assert _error_line(out, 2) == ("error: release phi-3-production not found (the current kube context, "
                                   "namespace fleetgate)")


def test_status_of_a_stuck_release_beside_the_registry(kubeconfig, gateway_factory):
    gateway = gateway_factory()
    with gateway.admin() as admin:
        for url, release, weight in (("http://qwen-7b-production.fleetgate.svc.cluster.local:8000", "stable", 90),
                                     ("http://qwen-7b-canary.fleetgate.svc.cluster.local:8000", "canary", 10)):
            admin.post("/admin/v1/models", json={"name": "qwen:7b", "environment": "production", "endpoint": url,
                                                  "release": release, "weight": weight}).raise_for_status()
    env = {"KUBECONFIG": kubeconfig, "FLEETGATE_GATEWAY_URL": gateway.url, "FLEETGATE_NAMESPACE": "fleetgate"}

    out = _opsctl("status", "qwen:7b", "--env", "production", "--chart", str(VLLM_CHART), **env)
    assert out.returncode == 0, out.stderr
    fields = _fields(out.stdout)
    assert fields["release"] == "qwen-7b-production (namespace fleetgate)"
    assert fields["revision"] == "3 pending-upgrade, updated 2026-11-03T11:00:00Z"
    assert fields["chart"] == "vllm-deployment-0.2.0 (app v0.11.0)"
    assert fields["local chart"].endswith(": differs from the deployed one")
    assert fields["pods"] == "unknown (Helm reports no pod status)"
    assert fields["stuck"].endswith("recover with: helm rollback qwen-7b-production 2 --namespace fleetgate")
    assert fields["registry"] == "active, 2 endpoint(s)"
    endpoints = {line.split()[0]: line.split() for line in out.stdout.split("\n\n")[1].splitlines()[1:]}
    assert endpoints["http://qwen-7b-production.fleetgate.svc.cluster.local:8000"][1:3] == ["stable", "90"]
    assert endpoints["http://qwen-7b-production.fleetgate.svc.cluster.local:8000"][-1] == "yes"
    assert endpoints["http://qwen-7b-canary.fleetgate.svc.cluster.local:8000"][-1] == "no"

    data = json.loads(_opsctl("status", "qwen:7b", "--env", "production", "-o", "json", **env).stdout)
    assert (data["release"], data["local_chart"]) == ("qwen-7b-production", None)  # no chart in the cwd
    assert data["deployment"]["status"] == "pending-upgrade" and data["deployment"]["pods"] is None
    assert data["deployment"]["recovery"] == "helm rollback qwen-7b-production 2 --namespace fleetgate"
    assert sorted(e["weight"] for e in data["registry"]["endpoints"]) == [10, 90]


def test_status_through_a_helm_binary_shows_pods(tmp_path, gateway_factory):
    gateway = gateway_factory()
    history = json.loads((FIXTURES / "history-pending-upgrade.json").read_text())[:2]
    helm = HelmBinary.install(tmp_path / "bin", {
        "history": [Reply(stdout=json.dumps(history))],
        "status": [Reply(stdout=(FIXTURES / "status-with-pods.json").read_text())]})
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "current-context": "dev", "contexts": [
        {"name": "dev", "context": {"cluster": "c"}}, {"name": "prod-eu", "context": {"namespace": "inference"}}]}))
    out = _opsctl("status", "qwen:7b", "--env", "production", "--kube-context", "prod-eu",
                  PATH=str(helm.directory), KUBECONFIG=str(kubeconfig), FLEETGATE_GATEWAY_URL=gateway.url)
    assert out.returncode == 0, out.stderr
    fields = _fields(out.stdout)
    assert fields["revision"] == "2 deployed, updated 2026-11-02T10:00:00Z"
    assert fields["pods"] == "1/2 ready"
    assert "qwen-7b-production-7d9c6b5f4-9wz7n Running, 3 restarts" in out.stdout
    assert "qwen-7b-production-7d9c6b5f4-2xkqp Running ready, 0 restarts" in out.stdout
    assert fields["registry"] == "not registered" and "stuck" not in fields
    assert fields["engine"] == f"helm binary {helm.path}"
    assert [c["argv"] for c in helm.calls()] == [
        [command, "qwen-7b-production", "--output", "json", "--namespace", "inference", "--kube-context", "prod-eu"]
        for command in ("history", "status")]


def test_status_of_a_model_neither_deployed_nor_registered(kubeconfig, gateway_factory):
    gateway = gateway_factory()
    out = _opsctl("status", "phi-3", "--env", "development", KUBECONFIG=kubeconfig, FLEETGATE_GATEWAY_URL=gateway.url)
    assert out.returncode == 0, out.stderr
    fields = _fields(out.stdout)
    assert fields["release"] == "phi-3-development: not installed"
    assert fields["registry"] == "not registered"


# --- the local deployer ------------------------------------------------------------------------------------


@pytest.fixture
def local_release(gateway_factory, tmp_path):
    """demo-chat-production as two simulator processes, registered under its release name."""
    gateway = gateway_factory()
    state = tmp_path / "state"
    deployer = LocalDeployer.from_options(DeployerOptions(state_dir=state, gateway_url=gateway.url,
                                                          admin_token=E2E_TOKEN, timeout_s=20))
    values = {"model": {"name": "demo-chat"}, "environment": "production", "replicaCount": 2,
              "local": {"engine": "simulator"}}
    try:
        deployer.apply("demo-chat-production", None, values, version="v1")
        deployer.apply("demo-chat-production", None, values, version="v2", description="rollout ro_1")
        deployer.prune("demo-chat-production")
        with gateway.admin() as admin:
            for url in deployer.endpoints("demo-chat-production"):
                admin.post("/admin/v1/models", json={"name": "demo-chat", "environment": "production",
                                                      "endpoint": url, "release": "demo-chat-production"})
            admin.post("/admin/v1/models", json={"name": "demo-chat", "environment": "production",
                                                  "endpoint": "http://127.0.0.1:9", "release": "mine"})
        yield gateway, state, deployer
    finally:
        deployer.uninstall("demo-chat-production")
        deployer.close()


def test_local_history_and_status_beside_the_registry(local_release):
    gateway, state, deployer = local_release
    env = {"FLEETGATE_GATEWAY_URL": gateway.url, "FLEETGATE_STATE_DIR": str(state),
           "FLEETGATE_DEPLOYER": ""}  # unset: local is the default
    out = _opsctl("history", "demo-chat", "--env", "production", "-o", "json", **env)
    assert out.returncode == 0, out.stderr
    assert [(r["revision"], r["status"], r["chart"], r["app_version"], r["description"])
            for r in json.loads(out.stdout)] == [(1, "superseded", "local", "v1", "Install complete"),
                                                 (2, "deployed", "local", "v2", "rollout ro_1")]
    table = _opsctl("history", "demo-chat", "--env", "production", "--deployer", "local", **env).stdout
    assert table.splitlines()[0].split() == ["REVISION", "STATUS", "CHART", "APP_VERSION", "UPDATED", "DESCRIPTION"]

    out = _opsctl("status", "demo-chat", "--env", "production", "--deployer", "local", **env)
    assert out.returncode == 0, out.stderr
    fields = _fields(out.stdout)
    assert fields["release"] == "demo-chat-production"  # no namespace: processes on this machine
    assert fields["revision"].startswith("2 deployed, updated ")
    assert fields["chart"] == "local (app v2)" and "local chart" not in fields
    assert fields["pods"] == "2/2 ready" and fields["ready"] == "yes"
    assert "demo-chat-production-r2-0 Running ready, 0 restarts" in out.stdout
    assert fields["engine"].startswith("local simulator on ")
    assert fields["registry"] == "active, 3 endpoint(s)"
    rows = [line.split() for line in out.stdout.split("\n\n")[1].splitlines()[1:]]
    assert sorted((row[1], row[-1]) for row in rows) == [
        ("demo-chat-production", "yes"), ("demo-chat-production", "yes"), ("mine", "no")]

    data = json.loads(_opsctl("status", "demo-chat", "--env", "production", "-o", "json", **env).stdout)
    assert data["deployment"]["ready"] is True and data["deployment"]["pods_ready"] == "2/2"
    assert data["deployment"]["namespace"] is None and data["deployment"]["revision"] == 2


def test_local_status_of_a_crashed_pod_and_of_a_missing_release(local_release):
    gateway, state, deployer = local_release
    env = {"FLEETGATE_GATEWAY_URL": gateway.url, "FLEETGATE_STATE_DIR": str(state), "FLEETGATE_DEPLOYER": "local"}
    victim = deployer.pid_files.read("demo-chat-production")[0]
    os.kill(victim.pid, signal.SIGKILL)
    wait_for(lambda: deployer.status("demo-chat-production").pods[0].phase == "Exited", timeout=10,
             what="the killed pod to exit")  # and this test's deployer reaps its child
    data = json.loads(_opsctl("status", "demo-chat", "--env", "production", "-o", "json", **env).stdout)
    assert [(p["phase"], p["ready"]) for p in data["deployment"]["pods"]] == [("Exited", False), ("Running", True)]
    assert data["deployment"]["ready"] is False and data["deployment"]["pods_ready"] == "1/2"

    out = _opsctl("status", "phi-3", "--env", "production", **env)
    assert out.returncode == 0, out.stderr
    assert _fields(out.stdout)["release"] == "phi-3-production: not installed"
    line = _error_line(_opsctl("history", "phi-3", "--env", "production", **env), 2)
    assert line == f"error: release phi-3-production not found (local deployer, gateway {gateway.url})"


@pytest.mark.parametrize("command", ["status", "history"])
def test_local_with_the_gateway_unreachable_is_one_line_and_exit_1(command, tmp_path):
    out = _opsctl(command, "demo-chat", "--env", "production", "--deployer", "local",
                  FLEETGATE_STATE_DIR=str(tmp_path / "state"))
    assert _error_line(out, 1) == ("error: release demo-chat-production: cannot reach the gateway at "
                                   "http://127.0.0.1:9 (ConnectionRefusedError)")
