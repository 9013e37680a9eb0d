"""Gateway processes for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import free_port, wait_for
from tests.vllm import CHAT_MODEL, VllmServer, require_vllm

E2E_TOKEN = "fg-admin-e2e"


class GatewayProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.env = {**env, "FLEETGATE_PORT": str(self.port)}
        self.proc: subprocess.Popen | None = None

    def start(self) -> GatewayProcess:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "opsctl", "gateway", "serve"], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT)
        wait_for(self.ready, timeout=30, what=f"gateway on {self.port} (log {self.log})")
        return self

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway exited: {self.log.read_text()[-2000:]}")
        return httpx.get(self.url + "/v1/status/readyz", timeout=2).status_code == 200

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {E2E_TOKEN}"}, timeout=30)

    def stop(self, sig: int | None = None) -> None:
        if self.proc and self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def module_gateway(state_dir: Path, token: str = E2E_TOKEN, **env_overrides: str) -> Iterator[GatewayProcess]:
    """One `opsctl gateway serve` for a whole test module (SQLite in `state_dir`, no usage sink)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    env.update(FLEETGATE_ADMIN_TOKEN=token, FLEETGATE_STATE_DIR=str(state_dir), FLEETGATE_USAGE_SINK="none")
    env.update(env_overrides)
    gw = GatewayProcess(env, state_dir.parent / f"{state_dir.name}-gateway.log").start()
    try:
        yield gw
    finally:
        gw.stop()


def cli(gateway_url: str, token: str, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """`run(*args, code=0)`: opsctl in this process against `gateway_url`, asserting its exit code."""
    from typer.testing import CliRunner

    from opsctl.cli import app

    monkeypatch.setenv("FLEETGATE_GATEWAY_URL", gateway_url)
    monkeypatch.setenv("FLEETGATE_ADMIN_TOKEN", token)
    runner = CliRunner()

    def run(*args: str, code: int = 0, input: str | None = None) -> Any:
        result = runner.invoke(app, list(args), input=input)
        assert result.exit_code == code, f"{args} → {result.exit_code}\n{result.output}"
        return result

    return run


@pytest.fixture
def gateway_factory(tmp_path) -> Callable[..., GatewayProcess]:
    started: list[GatewayProcess] = []

    def make(**env_overrides: str) -> GatewayProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
        env.update(FLEETGATE_ADMIN_TOKEN=E2E_TOKEN, FLEETGATE_STATE_DIR=str(tmp_path / "state"),
                   FLEETGATE_USAGE_SINK="none", FLEETGATE_HEALTH_INTERVAL_S="0.5")
        env.update(env_overrides)
        gw = GatewayProcess(env, tmp_path / f"gateway-{len(started)}.log").start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture(scope="module")
def real_vllm(tmp_path_factory) -> Iterator[VllmServer]:
    """One real vLLM chat server per test module (started on first use, ~45 s; stopped before the next module, so
    the modules that deploy their own vLLM releases never run beside an idle one).

    Without an install it skips, except under `make test-vllm` (FLEETGATE_REQUIRE_VLLM=1), which
    installs it first: there a missing install is a failure.
    """
    install = require_vllm()
    server = VllmServer(install, CHAT_MODEL, tmp_path_factory.mktemp("vllm") / "vllm.log").start()
    yield server
    server.stop()
