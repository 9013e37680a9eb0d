"""What the rollout e2e tests share: a gateway process, a stable release on the LocalDeployer (simulator pods),
`opsctl` run as a process against them, and client load from background threads.

Real pieces only: the gateway is `opsctl gateway serve`, pods are simulator processes the LocalDeployer starts,
and opsctl runs as the operator runs it. Every release is uninstalled at the end (no process outlives a test).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from opsctl.client import AdminClient
from opsctl.deploy import DeployerOptions, ReleaseNotFound
from opsctl.deploy.local import LocalDeployer
from opsctl.deploy.naming import release_name
from opsctl.deploy.registry_sync import sync_endpoints
from tests.e2e.conftest import E2E_TOKEN, GatewayProcess
from tests.support import wait_for

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "vllm-deployment"
MODEL = "demo-chat"
# Short analysis windows: a weight step needs 5 requests to the new release within 1 s windows.
FAST = ["--set", "analysis.interval_s=1", "--set", "analysis.min_requests=5", "--set", "analysis.timeout_s=30",
        "--set", "readiness_timeout_s=30"]


def write_playbook(path: Path, steps: str, kind: str = "canary") -> Path:
    """A canary playbook with these steps (YAML list items), params as the shipped one."""
    path.write_text(f"""kind: {kind}
params:
  model: null
  env: null
  version: null
  deployer: local
  chart: helm/vllm-deployment
  readiness_timeout_s: 30
values:
  model: {{name: "${{model}}"}}
  local: {{engine: simulator}}
readiness_timeout_s: "${{readiness_timeout_s}}"
steps:
{steps}
analysis:
  interval_s: 1
  min_requests: 5
  timeout_s: 30
  max_error_rate: 0.02
  max_error_rate_increase: 0.01
  max_p95_latency_ratio: 3
  latency_slack_ms: 100
  max_p95_ttft_ratio: 3
""")
    return path


@dataclass
class Stack:
    """A gateway process, its admin client, a LocalDeployer on its state dir, and an API key for load."""

    gateway: GatewayProcess
    state_dir: Path
    admin: AdminClient
    deployer: LocalDeployer
    keys: dict[str, str] = field(default_factory=dict)
    releases: set[str] = field(default_factory=set)

    def key(self, env: str) -> str:
        """An API key whose requests go to `env` (one per environment)."""
        if env not in self.keys:
            self.keys[env] = self.admin.post("/admin/v1/api-keys", {"org": "acme", "environment": env})["key"]
        return self.keys[env]

    def load(self, env: str, **kwargs: Any) -> Load:
        return Load(self.gateway.url, self.key(env), **kwargs)

    @property
    def env(self) -> dict[str, str]:
        """The environment `opsctl` runs with (no FLEETGATE_* of the developer's)."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
        return {**base, "FLEETGATE_GATEWAY_URL": self.gateway.url, "FLEETGATE_ADMIN_TOKEN": E2E_TOKEN,
                "FLEETGATE_STATE_DIR": str(self.state_dir), "FLEETGATE_DEPLOYER": "local"}

    def opsctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "opsctl", *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env, cwd=REPO)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "opsctl", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env, cwd=REPO)

    def deploy_stable(self, env: str, version: str = "v1", model: str = MODEL, **simulator: Any) -> list[str]:
        """The model's stable release (as `opsctl up` makes it) with its endpoints registered, ready."""
        release = release_name(model, env)
        values = {"model": {"name": model}, "local": {"engine": "simulator", "simulator": simulator}}
        self.releases.add(release)
        self.deployer.apply(release, CHART, values, values_files=(CHART / f"values-{env}.yaml",), version=version,
                            timeout_s=30)
        urls = self.deployer.endpoints(release)
        self.admin.post("/admin/v1/models", {"name": model, "environment": env, "metadata": {"kind": "chat"}})
        sync_endpoints(self.admin, model, env, release, urls)
        return urls

    def endpoints(self, model: str, env: str) -> list[dict[str, Any]]:
        return self.admin.get(f"/admin/v1/models/{env}/{model}")["endpoints"]

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        return self.admin.get(f"/admin/v1/rollouts/{rollout_id}")

    def newest_rollout(self, model: str, env: str) -> dict[str, Any]:
        newest = self.admin.get("/admin/v1/rollouts", model=model, env=env, limit=1)[0]
        return self.rollout(newest["id"])

    def history(self, release: str) -> list:
        try:
            return self.deployer.history(release)
        except ReleaseNotFound:
            return []

    def pids(self, release: str) -> list[int]:
        """Pids of the processes the LocalDeployer records for the release (any revision)."""
        return [p.pid for p in self.deployer.pid_files.read(release)]

    def cleanup(self) -> None:
        self.deployer.stop_all()
        self.deployer.close()
        self.admin.close()


def start_stack(gateway_factory: Any, tmp_path: Path) -> Stack:
    gateway = gateway_factory(FLEETGATE_HEALTH_INTERVAL_S="0.5")
    state_dir = tmp_path / "state"
    admin = AdminClient(gateway.url, E2E_TOKEN)
    deployer = LocalDeployer.from_options(DeployerOptions(state_dir=state_dir, gateway_url=gateway.url,
                                                          admin_token=E2E_TOKEN, timeout_s=30))
    stack = Stack(gateway, state_dir, admin, deployer)
    admin.post("/admin/v1/organizations", {"name": "acme"})
    return stack


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def events_of(stdout: str) -> list[dict[str, Any]]:
    """The JSON lines `--output json` printed (events, then the result)."""
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def result_of(stdout: str) -> dict[str, Any]:
    lines = events_of(stdout)
    assert lines and lines[-1].get("event") == "result", stdout[-2000:]
    return lines[-1]


def read_until(proc: subprocess.Popen, predicate: Any, timeout: float = 60) -> list[dict[str, Any]]:
    """Read the process's JSON lines until one matches `predicate` (the process goes on)."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    for line in proc.stdout:
        if not line.strip():
            continue
        event = json.loads(line)
        seen.append(event)
        if predicate(event):
            return seen
        assert time.monotonic() < deadline, f"no matching event within {timeout}s: {seen[-5:]}"
    raise AssertionError(f"the process ended before the event: {seen[-5:]} "
                         f"{proc.stderr.read()[-2000:] if proc.stderr else ''}")


def started(step: int) -> Any:
    """Matches the "started" event of step `step` (its index in the playbook)."""
    return lambda e: e.get("event") == "step" and e.get("phase") == "started" and e.get("step") == step \
        and e.get("name") != "rollback"


def run_until_event(proc: subprocess.Popen, predicate: Any, timeout: float = 60) -> list[dict[str, Any]]:
    """Read the process's JSON lines until one matches `predicate`, then SIGKILL it (and reap it)."""
    try:
        seen = read_until(proc, predicate, timeout)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
    return seen


class Load:
    """Continuous client traffic to the gateway from background threads: counts every answer's status.

    `rate` requests/s per thread (non-streaming and, with `stream`, as many streaming ones); an error is any
    status other than 200, a transport failure, or a stream that ends without [DONE].
    """

    def __init__(self, url: str, key: str, model: str = MODEL, *, rate: float = 40.0, stream: bool = True,
                 environment: str | None = None) -> None:
        self.url, self.key, self.model, self.rate = url, key, model, rate
        self.kinds = ("unary", "stream") if stream else ("unary",)
        self.stop_event = threading.Event()
        self.counts: dict[str, Counter] = {k: Counter() for k in self.kinds}
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._loop, args=(k,), daemon=True) for k in self.kinds]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(30)

    def total(self, kind: str) -> int:
        return sum(self.counts[kind].values())

    def errors(self, kind: str) -> int:
        return sum(n for status, n in self.counts[kind].items() if status != 200)

    def answered(self, n: int = 10, timeout: float = 15.0) -> None:
        """Wait until every kind of traffic got `n` more answers: load really ran on both sides of an operation."""
        targets = {kind: self.total(kind) + n for kind in self.kinds}
        wait_for(lambda: all(self.total(kind) >= total for kind, total in targets.items()), timeout=timeout,
                 what=f"{n} more answers of each kind of load")

    def _loop(self, kind: str) -> None:
        body = {"model": self.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                "stream": kind == "stream"}
        headers = {"Authorization": f"Bearer {self.key}"}
        interval = 1.0 / self.rate
        with httpx.Client(base_url=self.url, headers=headers, timeout=30) as client:
            next_at = time.monotonic()
            while not self.stop_event.is_set():
                status = self._one(client, body, kind)
                self.counts[kind][status] += 1
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))

    def _one(self, client: httpx.Client, body: dict[str, Any], kind: str) -> int | str:
        try:
            if kind == "unary":
                r = client.post("/v1/chat/completions", json=body)
                if r.status_code != 200:
                    self.failures.append(f"{r.status_code} {r.text[:200]}")
                return r.status_code
            with client.stream("POST", "/v1/chat/completions", json=body) as r:
                text = "".join(r.iter_text())
                if r.status_code == 200 and "[DONE]" not in text:
                    self.failures.append(f"stream without [DONE]: {text[-200:]}")
                    return "truncated"
                if r.status_code != 200:
                    self.failures.append(f"{r.status_code} {text[:200]}")
                return r.status_code
        except httpx.HTTPError as e:
            self.failures.append(f"{type(e).__name__}: {e}")
            return type(e).__name__


def stack_fixture(gateway_factory: Any, tmp_path: Path) -> Iterator[Stack]:
    stack = start_stack(gateway_factory, tmp_path)
    try:
        yield stack
    finally:
        stack.cleanup()
