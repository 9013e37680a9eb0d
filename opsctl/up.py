"""`opsctl up`: the embedded stack on one machine — SQLite store, gateway, simulated pods, local lake.

Everything runs as child processes of this one; Ctrl-C (or SIGTERM) stops them all.
Running it again reuses the state directory: the same admin token, org, demo key and models.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gateway.auth.secrets import generate_admin_token
from gateway.errors import FleetgateError
from gateway.settings import Settings
from opsctl.client import ADMIN_TOKEN_FILE, AdminClient

DEMO_KEY_FILE = "demo_key"
DEMO_ORG = "demo"
DEMO_MODELS = (
    # name, input $/1M, output $/1M
    ("demo-chat", 0.5, 1.5),
    ("demo-embed", 0.02, 0.0),
)


class StackError(FleetgateError):
    status = 500
    code = "stack_failed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _secret_file(path: Path, value: str) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(value + "\n")


def admin_token_for(settings: Settings) -> str:
    """FLEETGATE_ADMIN_TOKEN when set, else the one saved in the state dir (created once)."""
    if settings.admin_token:
        return settings.admin_token
    path = Path(settings.state_dir) / ADMIN_TOKEN_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    token = generate_admin_token()
    _secret_file(path, token)
    return token


@dataclass
class Stack:
    settings: Settings
    log_dir: Path
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child's lifetime
        proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
        log.close()
        self.procs.append((name, proc))
        return proc

    def wait_http(self, name: str, url: str, timeout: float = 60.0,
                  cancelled: Callable[[], bool] = lambda: False) -> None:
        deadline = time.monotonic() + timeout
        proc = dict(self.procs)[name]
        while time.monotonic() < deadline and not cancelled():
            if proc.poll() is not None:
                raise StackError(f"{name} exited with {proc.returncode}; see {self.log_dir / (name + '.log')}")
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        if cancelled():
            raise StackError("interrupted while starting")
        raise StackError(f"{name} did not become ready at {url} within {timeout:.0f}s")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 15
        for _, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _ensure_demo(client: AdminClient, state_dir: Path, sims: dict[str, str]) -> str:
    try:
        client.get(f"/admin/v1/organizations/{DEMO_ORG}")
    except FleetgateError as e:
        if e.status != 404:
            raise
        client.post("/admin/v1/organizations", {"name": DEMO_ORG})
    for name, input_price, output_price in DEMO_MODELS:
        url = sims[name]
        try:
            existing = client.get(f"/admin/v1/models/production/{name}")["endpoints"]
        except FleetgateError as e:
            if e.status != 404:
                raise
            existing = []
        for endpoint in existing:  # pods from an earlier run listened on other ports
            if endpoint["url"] != url:
                client.delete(f"/admin/v1/endpoints/{endpoint['id']}")
        client.post("/admin/v1/models", {"name": name, "environment": "production", "endpoint": url,
                                         "input_price": input_price, "output_price": output_price,
                                         "max_tokens": 256})
    key_file = state_dir / DEMO_KEY_FILE
    if key_file.is_file():
        key = key_file.read_text().strip()
        probe = httpx.get(client.base_url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
        if probe.status_code == 200:
            return key
    created = client.post("/admin/v1/api-keys", {"org": DEMO_ORG, "name": "demo"})
    _secret_file(key_file, created["key"])
    return created["key"]


def banner(base_url: str, key: str, started_s: float) -> str:
    return f"""
Fleetgate is up in {started_s:.1f}s.

  endpoint   {base_url}/v1
  api key    {key}
  models     {', '.join(name for name, _, _ in DEMO_MODELS)}

Try it:

  curl -s {base_url}/v1/chat/completions \\
    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
    -d '{{"model": "demo-chat", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  python -c 'from openai import OpenAI; c = OpenAI(base_url="{base_url}/v1", api_key="{key}"); \\
print(c.chat.completions.create(model="demo-chat", messages=[{{"role": "user", "content": "Hi"}}]).choices[0].message.content)'

Admin: opsctl --help (this state dir holds the admin token). Ctrl-C stops everything.
"""


def run_up(settings: Settings, *, ready_file: Path | None = None) -> int:
    """Start the stack, print how to use it, and wait for Ctrl-C or SIGTERM."""
    started = time.monotonic()
    state_dir = Path(settings.state_dir).resolve()
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    settings = settings.replace(state_dir=state_dir)
    token = admin_token_for(settings)
    stack = Stack(settings, state_dir / "logs")
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        sims = {}
        for name, _, _ in DEMO_MODELS:
            port = _free_port()
            stack.spawn(name, ["-m", "opsctl.sim", "--model", name, "--port", str(port)])
            sims[name] = f"http://127.0.0.1:{port}"
        env = {"FLEETGATE_ADMIN_TOKEN": token, "FLEETGATE_STATE_DIR": str(state_dir),
               "FLEETGATE_DATABASE_URL": settings.database_url, "FLEETGATE_LAKE_URL": settings.lake_url,
               "FLEETGATE_PORT": str(settings.port), "FLEETGATE_HOST": settings.host,
               "FLEETGATE_HEALTH_INTERVAL_S": "2"}
        stack.spawn("gateway", ["-m", "opsctl", "gateway", "serve"], env=env)
        base_url = f"http://{settings.host}:{settings.port}"
        for name, url in sims.items():
            stack.wait_http(name, url + "/health", cancelled=lambda: stopping)
        stack.wait_http("gateway", base_url + "/v1/status/readyz", cancelled=lambda: stopping)
        with AdminClient(base_url, token) as client:
            key = _ensure_demo(client, state_dir, sims)
        print(banner(base_url, key, time.monotonic() - started), flush=True)
        if ready_file is not None:
            ready_file.write_text(base_url)
        while not stopping:
            for name, proc in stack.procs:
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping (log: {stack.log_dir / name}.log)",
                          file=sys.stderr)
                    return 1
            time.sleep(0.2)
        print("stopping…", flush=True)
        return 0
    finally:
        stack.stop()
