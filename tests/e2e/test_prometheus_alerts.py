"""A real Prometheus evaluates the shipped alert rules while it scrapes a running stack.

One gateway process fronts two simulator processes: `bad` answers half its requests with a 500
(`opsctl sim serve --error-rate 0.5`), `good` answers them all. Prometheus scrapes the three every
second and evaluates helm/observability/rules/*.yaml unchanged (their `for:` too: pending counts);
the error-rate alert must turn up for `bad` within a bounded time while nothing alerts about `good`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import free_port, repo_root, unavailable, wait_for

RULE_FILES = sorted((repo_root() / "helm" / "observability" / "rules").glob("*.yaml"))
ALERT_DEADLINE_S = 45.0


class Process:
    """A child process with its output in a log file, stopped (and waited for) at the end of the test."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.proc.args[:3]} exited: {self.log.read_text()[-2000:]}")
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def spawn(tmp_path) -> Iterator[Callable[[str, list[str]], Process]]:
    started: list[Process] = []

    def start(name: str, args: list[str]) -> Process:
        process = Process(args, tmp_path / f"{name}.log")
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


def _answers(url: str, process: Process) -> bool:
    process.alive()
    with contextlib.suppress(httpx.TransportError):
        return httpx.get(url, timeout=2).status_code == 200
    return False


def start_sim(spawn, model: str, *flags: str) -> str:
    port = free_port()
    process = spawn(f"sim-{model}", [sys.executable, "-m", "opsctl", "sim", "serve", "--model", model,
                                     "--port", str(port), *flags])
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(url + "/health", process), timeout=20, what=f"simulator {model}")
    return url


def prometheus_binary() -> str:
    """The Prometheus server; skips (fails under FLEETGATE_REQUIRE_SERVICES=1) when it is not installed."""
    binary = shutil.which("prometheus")
    if binary is None:
        unavailable("the prometheus server is not on PATH (Debian: apt-get install prometheus)")
    return binary


def start_prometheus(spawn, tmp_path: Path, gateway: str, pods: list[str]) -> str:
    """Prometheus scraping the gateway and the pods every second, with the shipped rule files."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in RULE_FILES],
        "scrape_configs": [
            {"job_name": "fleetgate-gateway", "static_configs": [{"targets": [gateway.removeprefix("http://")]}]},
            {"job_name": "vllm", "static_configs": [{"targets": [p.removeprefix("http://") for p in pods]}]},
        ],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    process = spawn("prometheus", [prometheus_binary(), f"--config.file={config_file}",
                                   f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{port}"])
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(url + "/-/ready", process), timeout=30, what="prometheus ready")
    return url


async def drive(gateway: str, key: str, models: list[str], stop: asyncio.Event) -> dict[str, dict[int, int]]:
    """About 20 requests/s per model until `stop`; returns the status counts per model."""
    statuses: dict[str, dict[int, int]] = {m: {} for m in models}
    async with httpx.AsyncClient(base_url=gateway, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
        while not stop.is_set():
            for model in models:
                r = await client.post("/v1/chat/completions", json={
                    "model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
                statuses[model][r.status_code] = statuses[model].get(r.status_code, 0) + 1
            await asyncio.sleep(0.05)
    return statuses


async def query(client: httpx.AsyncClient, path: str, **params: str) -> Any:
    r = await client.get(path, params=params)
    r.raise_for_status()
    return r.json()["data"]


def mentions(alert: dict[str, Any], model: str, pod: str) -> bool:
    """Whether an alert is about `model` or its pod (by the gateway's endpoint label or the scrape target)."""
    labels = alert["labels"]
    return (model in (labels.get("model"), labels.get("model_name"))
            or labels.get("endpoint") == pod or labels.get("instance") == pod.removeprefix("http://"))


async def test_error_rate_alert_for_a_failing_pod_and_none_for_a_healthy_one(spawn, gateway_factory, tmp_path):
    prometheus_binary()  # before starting anything
    bad = start_sim(spawn, "bad", "--error-rate", "0.5", "--seed", "7")
    good = start_sim(spawn, "good")
    gw = await asyncio.to_thread(gateway_factory)
    with gw.admin() as admin:
        assert admin.post("/admin/v1/organizations", json={"name": "acme"}).status_code == 201
        for model, url in (("bad", bad), ("good", good)):
            assert admin.post("/admin/v1/models", json={"name": model, "endpoint": url}).status_code in (200, 201)
        key = admin.post("/admin/v1/api-keys", json={"org": "acme"}).json()["key"]
    prometheus = start_prometheus(spawn, tmp_path, gw.url, [bad, good])

    stop = asyncio.Event()
    traffic = asyncio.create_task(drive(gw.url, key, ["bad", "good"], stop))
    started = time.monotonic()
    try:
        async with httpx.AsyncClient(base_url=prometheus, timeout=5) as prom:
            while True:
                alerts = (await query(prom, "/api/v1/alerts"))["alerts"]
                assert not [a for a in alerts if mentions(a, "good", good)], alerts
                raised = {(a["labels"]["alertname"], a["labels"].get("severity")) for a in alerts
                          if mentions(a, "bad", bad) and a["state"] in ("pending", "firing")}
                if {("FleetgateHighErrorRate", "high"), ("FleetgateAvailabilityBudgetBurn", "critical")} <= raised:
                    break
                assert time.monotonic() - started < ALERT_DEADLINE_S, f"no error-rate alert for bad yet: {alerts}"
                await asyncio.sleep(0.5)
            # The healthy model was scraped and evaluated over the same window: its error ratio is a real 0.
            good_ratio = await query(prom, "/api/v1/query", query='fleetgate:request_errors:ratio_rate5m{model="good"}')
            assert [float(s["value"][1]) for s in good_ratio["result"]] == [0.0]
            # Both simulator pods are scraped with vLLM's metric names.
            pods = await query(prom, "/api/v1/query", query='up{job="vllm"} == 1 and on (instance) '
                                                            'vllm:num_requests_running')
            assert len(pods["result"]) == 2, pods
    finally:
        stop.set()
        statuses = await traffic
    assert statuses["good"] == {200: statuses["good"][200]}, statuses
    assert any(status >= 500 for status in statuses["bad"]), statuses
