"""A real Fleetgate stack for the TUI's tests: `opsctl up` (SQLite store, gateway, simulator pods, local lake)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from gateway.settings import Settings
from tests.support import free_port
from tui.source import LiveSource

CHAT_MODEL = "demo-chat"
EMBED_MODEL = "demo-embed"


@dataclass
class FleetStack:
    """A running `opsctl up`; `source()` gives the TUI a live source on it."""

    state_dir: Path
    port: int
    proc: subprocess.Popen | None = None
    url: str = ""
    api_key: str = ""
    admin_token: str = ""
    banner: list[str] = field(default_factory=list)

    def start(self, timeout: float = 90.0) -> FleetStack:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
        env["FLEETGATE_HEALTH_INTERVAL_S"] = "0.5"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "opsctl", "up", "--port", str(self.port), "--state-dir", str(self.state_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError("opsctl up exited early:\n" + "".join(self.banner))
            self.banner.append(line)
            if line.startswith("Admin:"):
                text = "".join(self.banner)
                self.url = re.search(r"endpoint\s+(\S+)", text).group(1).removesuffix("/v1")
                self.api_key = re.search(r"api key\s+(\S+)", text).group(1)
                self.admin_token = (self.state_dir / "admin_token").read_text().strip()
                return self
        raise AssertionError("no banner from opsctl up:\n" + "".join(self.banner))

    def settings(self) -> Settings:
        return Settings(state_dir=self.state_dir)

    def source(self, **kwargs) -> LiveSource:
        return LiveSource(self.settings(), self.url, self.admin_token, **kwargs)

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=30)

    def chat(self, n: int = 1, *, model: str = CHAT_MODEL, key: str | None = None) -> list[int]:
        """Send n chat completions with the demo key (or `key`); their statuses."""
        headers = {"Authorization": f"Bearer {key or self.api_key}"}
        body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
        with httpx.Client(base_url=self.url, headers=headers, timeout=30) as client:
            return [client.post("/v1/chat/completions", json=body).status_code for _ in range(n)]

    def flush_usage(self) -> None:
        with self.admin() as admin:
            admin.post("/admin/v1/usage/flush").raise_for_status()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        children = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for child in children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass


def start_stack(state_dir: Path) -> FleetStack:
    return FleetStack(state_dir=state_dir, port=free_port()).start()
