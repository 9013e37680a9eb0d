"""Rollouts under load, on the LocalDeployer (simulator pods): `python -m benchmarks.rollout`.

(a) `opsctl rollback` of a model under 200 req/s: wall time of the command and failed client requests;
(b) a full healthy canary (the shipped playbook: smoke, shadow, 10 → 50 → 100 % with 30 s analysis windows,
    finalize) under the same load: its duration and failed client requests (must be 0).

Starts a gateway process, deploys the model's stable release with the LocalDeployer, drives `opsctl` as an
operator would, and prints a markdown table with the command that made it (docs/benchmarks.md is not touched).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.services import Service, free_port, http_status  # noqa: E402
from opsctl.client import AdminClient  # noqa: E402
from opsctl.deploy import DeployerOptions  # noqa: E402
from opsctl.deploy.local import LocalDeployer  # noqa: E402
from opsctl.deploy.naming import release_name  # noqa: E402
from opsctl.deploy.registry_sync import sync_endpoints  # noqa: E402

MODEL = "bench-chat"
ADMIN_TOKEN = "fg-bench-admin-token"
CHART = REPO / "helm" / "vllm-deployment"


@dataclass
class Load:
    """Open-loop client traffic at `rate` req/s from a background thread (aiohttp), until stopped.

    Every answer is counted by status; a failure is anything but 200 (transport errors included).
    """

    url: str
    key: str
    rate: float
    stream_share: float = 0.1  # this share of the requests stream (the rest are unary)
    counts: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.counts.items() if status != 200)

    async def _run(self) -> None:
        import aiohttp

        interval = 1.0 / self.rate
        headers = {"Authorization": f"Bearer {self.key}"}
        tasks: set[asyncio.Task] = set()
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as session:
            next_at, n = time.monotonic(), 0
            while not self._stop.is_set():
                stream = (n * self.stream_share) % 1 + self.stream_share >= 1  # an even spread of streams
                task = asyncio.create_task(self._one(session, stream))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await asyncio.gather(*tasks)

    async def _one(self, session, stream: bool) -> None:  # noqa: ANN001 - aiohttp.ClientSession
        import aiohttp

        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": stream}
        try:
            async with session.post(self.url + "/v1/chat/completions", json=body) as r:
                text = await r.text()
                status: int | str = r.status
                if r.status == 200 and stream and "[DONE]" not in text:
                    status = "truncated"
                if status != 200:
                    self.failures.append(f"{status} {text[:200]}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            status = type(e).__name__
            self.failures.append(status)
        self.counts[status] += 1


@dataclass(frozen=True)
class Row:
    scenario: str
    wall_s: float
    requests: int
    failed: int
    outcome: str


class Bench:
    """A gateway process, the model's stable release on the LocalDeployer, opsctl against them."""

    def __init__(self, work: Path, env: str) -> None:
        self.work, self.env = work, env
        self.state_dir = work / "state"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
        self.cli_env = {**base, "FLEETGATE_GATEWAY_URL": self.url, "FLEETGATE_ADMIN_TOKEN": ADMIN_TOKEN,
                        "FLEETGATE_STATE_DIR": str(self.state_dir), "FLEETGATE_DEPLOYER": "local"}
        self.gateway = Service("gateway", [sys.executable, "-m", "opsctl", "gateway", "serve"], log_dir=work,
                               env={**self.cli_env, "FLEETGATE_PORT": str(self.port), "FLEETGATE_USAGE_SINK": "none",
                                    "FLEETGATE_HEALTH_INTERVAL_S": "1"}, cwd=REPO)
        self.admin: AdminClient | None = None
        self.deployer: LocalDeployer | None = None

    @contextlib.contextmanager
    def running(self) -> Iterator[Bench]:
        self.gateway.start()
        try:
            self.gateway.wait_ready(lambda: http_status(self.url + "/v1/status/readyz") == 200, timeout=30,
                                    what="ready")
            self.admin = AdminClient(self.url, ADMIN_TOKEN)
            self.deployer = LocalDeployer.from_options(DeployerOptions(
                state_dir=self.state_dir, gateway_url=self.url, admin_token=ADMIN_TOKEN, timeout_s=60))
            yield self
        finally:
            if self.deployer is not None:
                self.deployer.stop_all()
                self.deployer.close()
            if self.admin is not None:
                self.admin.close()
            self.gateway.stop()

    def key(self) -> str:
        assert self.admin is not None
        self.admin.post("/admin/v1/organizations", {"name": "bench"})
        return self.admin.post("/admin/v1/api-keys", {"org": "bench", "environment": self.env})["key"]

    def deploy_stable(self, version: str) -> None:
        """The stable release (as `opsctl up` makes it), registered: the state a rollout starts from."""
        assert self.admin is not None and self.deployer is not None
        release = release_name(MODEL, self.env)
        values = {"model": {"name": MODEL}, "local": {"engine": "simulator", "simulator": {"ttft_ms": 5}}}
        self.deployer.apply(release, CHART, values, values_files=(CHART / f"values-{self.env}.yaml",),
                            version=version, timeout_s=60)
        self.admin.post("/admin/v1/models", {"name": MODEL, "environment": self.env, "metadata": {"kind": "chat"}})
        sync_endpoints(self.admin, MODEL, self.env, release, self.deployer.endpoints(release))

    def opsctl(self, *args: str) -> tuple[subprocess.CompletedProcess, float]:
        started = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "opsctl", *args], capture_output=True, text=True,
                             env=self.cli_env, cwd=REPO, timeout=1800)
        return out, time.monotonic() - started


def measure(bench: Bench, load: Load, scenario: str, *args: str, settle_s: float = 2.0) -> Row:
    """Run `opsctl ARGS` while the load runs (from `settle_s` before to `settle_s` after)."""
    load.start()
    time.sleep(settle_s)
    out, wall = bench.opsctl(*args)
    time.sleep(settle_s)
    load.stop()
    outcome = "ok" if out.returncode == 0 else f"exit {out.returncode}: {(out.stderr or out.stdout)[-300:]}"
    return Row(scenario, wall, load.total, load.failed, outcome)


def run(options: argparse.Namespace) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="fleetgate-bench-rollout-") as tmp, \
            Bench(Path(tmp), options.env).running() as bench:
        key = bench.key()
        bench.deploy_stable("v1")
        interval = str(options.analysis_interval)
        canary = measure(bench, Load(bench.url, key, options.rate), "healthy canary (shipped playbook)",
                         "rollout", "start", MODEL, "--env", options.env, "--version", "v2",
                         "--set", f"analysis.interval_s={interval}", "--set", "values.local.simulator.ttft_ms=5")
        rows.append(canary)
        rollback = measure(bench, Load(bench.url, key, options.rate), "opsctl rollback (to v1)",
                           "rollback", MODEL, "--env", options.env)
        rows.append(rollback)
    return rows


def table(rows: list[Row], options: argparse.Namespace, command: str) -> str:
    lines = [f"Rollouts on the LocalDeployer (simulator pods), {options.env}, open-loop load {options.rate:g} req/s "
             f"(10 % streaming), analysis windows {options.analysis_interval:g} s.", "",
             "| scenario | wall time | client requests | failed requests | outcome |", "|---|---|---|---|---|"]
    lines += [f"| {r.scenario} | {r.wall_s:.1f} s | {r.requests} | {r.failed} | {r.outcome} |" for r in rows]
    lines += ["", f"Command: `{command}`"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=200.0, help="client req/s during each operation (default 200)")
    p.add_argument("--analysis-interval", type=float, default=30.0,
                   help="seconds per analysis window of the canary (default 30, as shipped)")
    p.add_argument("--env", default="production", help="environment (default production: 2 pods per release)")
    p.add_argument("--quick", action="store_true", help="5 s analysis windows (a smoke run of the benchmark)")
    options = p.parse_args(argv)
    if options.quick:
        options.analysis_interval = 5.0
    if options.rate <= 0 or options.analysis_interval <= 0:
        p.error("--rate and --analysis-interval must be positive")
    command = "python -m benchmarks.rollout" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    rows = run(options)
    print(table(rows, options, command))
    return 0 if all(r.failed == 0 and r.outcome == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
