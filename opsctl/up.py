"""`opsctl up`: the embedded stack on one machine — SQLite store, gateway, simulated pods, local lake.

The gateway is a child process; the demo pods are releases of the LocalDeployer (`demo-chat-production`,
`demo-embed-production`, simulator engine), so `opsctl deployment`, `rollout` and `rollback` work on them.
Ctrl-C (or SIGTERM) stops them all. Running it again reuses the state directory: the same admin token, org,
demo key, models and releases (their processes restarted, on their old ports when free).
One `opsctl up` per state dir (a flock held for its whole life); the state dir is private (0700/0600).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.auth.secrets import generate_admin_token
from gateway.errors import FleetgateError
from gateway.settings import Settings
from opsctl.client import AdminClient, GatewayUnreachable, path_part
from opsctl.state import (
    ADMIN_TOKEN_FILE,
    DEMO_KEY_FILE,
    GATEWAY_URL_FILE,
    StackLock,
    make_private,
    read_value,
    write_private,
)

if TYPE_CHECKING:
    from opsctl.deploy.local import LocalDeployer

DEMO_ORG = "demo"
DEMO_ENV = "production"
DEMO_MODELS = (
    # name, input $/1M, output $/1M
    ("demo-chat", 0.5, 1.5),
    ("demo-embed", 0.02, 0.0),
)
DEMO_VERSION = "simulator"
# Endpoints `opsctl up` registers carry their release's name (e.g. demo-chat-production); only those are
# ever removed by it, so endpoints a user registered on the demo models survive a restart. Versions before
# the LocalDeployer labelled them "opsctl-up": those pods are gone, so their endpoints are removed too.
LEGACY_RELEASE = "opsctl-up"
POD_READY_TIMEOUT_S = 60
PRIVATE_UMASK = 0o077  # files of this process and its children: owner only


class StackError(FleetgateError):
    """The stack could not start or a part of it died (exit 1)."""

    status = 500
    code = "stack_failed"


def check_port_free(host: str, port: int) -> None:
    """Fail before anything starts if something already listens on host:port.

    Raises:
        StackError: the port is taken or cannot be bound.
    """
    if port == 0:
        raise StackError("opsctl up needs a fixed port (--port 0 is not supported)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise StackError(f"cannot resolve host {host!r}: {e.strerror}") from e
    with socket.socket(family, kind, proto) as s:
        # SO_REUSEADDR: connections of an earlier run in TIME_WAIT do not count as "in use"
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise StackError(f"port {port} on {host} is already in use ({e.strerror}); stop what listens "
                             "there or pick another port with --port") from e


def admin_token_for(settings: Settings) -> tuple[str, Path | None]:
    """FLEETGATE_ADMIN_TOKEN when set, else the one saved in the state dir (created once), and its file."""
    if settings.admin_token:
        return settings.admin_token, None
    path = Path(settings.state_dir) / ADMIN_TOKEN_FILE
    token = read_value(path)
    if token is None:
        token = generate_admin_token()
        write_private(path, token)
    return token, path


def _http_status(url: str, path: str, token: str | None = None) -> int | None:
    """Status of GET url+path, or None while nothing answers."""
    try:
        with AdminClient(url, token, timeout=2.0) as client:
            return client.get_status(path)
    except GatewayUnreachable:
        return None


@dataclass
class Stack:
    settings: Settings
    log_dir: Path
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child's lifetime
        proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                                umask=PRIVATE_UMASK)
        log.close()
        self.procs.append((name, proc))
        return proc

    def wait_http(self, name: str, url: str, path: str, timeout: float = 60.0,
                  cancelled: Callable[[], bool] = lambda: False) -> None:
        deadline = time.monotonic() + timeout
        proc = dict(self.procs)[name]
        while time.monotonic() < deadline and not cancelled():
            if proc.poll() is not None:
                raise StackError(f"{name} exited with {proc.returncode}; see {self.log_dir / (name + '.log')}")
            if _http_status(url, path) == 200:
                return
            time.sleep(0.1)
        if cancelled():
            raise StackError("interrupted while starting")
        raise StackError(f"{name} did not become ready at {url}{path} within {timeout:.0f}s")

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


def demo_values(model: str) -> dict[str, Any]:
    """The values of a demo pod's release: one simulator process serving `model`."""
    return {"model": {"name": model}, "environment": DEMO_ENV, "replicaCount": 1, "local": {"engine": "simulator"}}


def start_demo_pods(deployer: LocalDeployer) -> dict[str, tuple[str, list[str]]]:
    """Each demo model's release running: installed on the first run, its deployed revision (whatever a
    rollout made it since) restarted on later ones.

    Returns:
        model → (release, endpoint URLs).

    Raises:
        DeployError: a pod did not become ready.
    """
    from opsctl.deploy import ReleaseNotFound
    from opsctl.deploy.naming import release_name

    pods = {}
    for name, _, _ in DEMO_MODELS:
        release = release_name(name, DEMO_ENV)
        try:
            deployed = any(r.status == "deployed" for r in deployer.history(release))
        except ReleaseNotFound:
            deployed = False
        if deployed:
            urls = deployer.ensure_running(release, timeout_s=POD_READY_TIMEOUT_S)
        else:
            deployer.apply(release, None, demo_values(name), version=DEMO_VERSION, description="opsctl up",
                           timeout_s=POD_READY_TIMEOUT_S)
            urls = deployer.endpoints(release)
        pods[name] = (release, urls)
    return pods


def _register_pods(client: AdminClient, name: str, release: str, urls: Sequence[str],
                   prices: tuple[float, float]) -> None:
    """The model (priced on creation only: a user's later changes stay) routing to the release's pods;
    endpoints of an earlier run whose URL is gone are removed (nothing listens there any more)."""
    from opsctl.deploy.registry_sync import model_endpoints, stale_endpoints, sync_endpoints

    try:
        client.get(f"/admin/v1/models/{DEMO_ENV}/{path_part(name)}")
    except FleetgateError as e:
        if e.status != 404:
            raise
        client.post("/admin/v1/models", {"name": name, "environment": DEMO_ENV, "input_price": prices[0],
                                         "output_price": prices[1], "max_tokens": 256})
    ours = sync_endpoints(client, name, DEMO_ENV, release, urls)
    legacy = [e for e in model_endpoints(client, name, DEMO_ENV) if e["release"] == LEGACY_RELEASE]
    for endpoint in [*stale_endpoints(ours, urls), *legacy]:
        client.delete(f"/admin/v1/endpoints/{path_part(endpoint['id'])}")


def _ensure_demo(client: AdminClient, state_dir: Path, pods: dict[str, tuple[str, list[str]]]) -> str:
    """The demo org, models pointing at this run's pods, and a working demo key (returned)."""
    try:
        client.get(f"/admin/v1/organizations/{DEMO_ORG}")
    except FleetgateError as e:
        if e.status != 404:
            raise
        client.post("/admin/v1/organizations", {"name": DEMO_ORG})
    for name, input_price, output_price in DEMO_MODELS:
        release, urls = pods[name]
        _register_pods(client, name, release, urls, (input_price, output_price))
    key_file = state_dir / DEMO_KEY_FILE
    key = read_value(key_file)
    if key is not None and _http_status(client.base_url, "/v1/models", key) == 200:
        return key
    created = client.post("/admin/v1/api-keys", {"org": DEMO_ORG, "name": "demo"})
    write_private(key_file, created["key"])
    return created["key"]


def banner(base_url: str, key: str, started_s: float, state_dir: Path, token_file: Path | None) -> str:
    token_where = str(token_file) if token_file else "$FLEETGATE_ADMIN_TOKEN (not saved in the state dir)"
    default_dir = Path(".fleetgate").resolve() == state_dir
    find = "" if default_dir else f"\n  export FLEETGATE_STATE_DIR={state_dir}   # opsctl finds the stack from anywhere"
    return f"""
Fleetgate is up in {started_s:.1f}s.

  endpoint     {base_url}/v1
  api key      {key}
  models       {', '.join(name for name, _, _ in DEMO_MODELS)}
  state dir    {state_dir}   (private: 0700)
  admin token  {token_where}

Copy into your shell:

  export KEY={key}
  export OPENAI_BASE_URL={base_url}/v1 OPENAI_API_KEY={key}{find}

Try it:

  curl -s $OPENAI_BASE_URL/chat/completions \\
    -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" \\
    -d '{{"model": "demo-chat", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  python -c 'from openai import OpenAI; r = OpenAI().chat.completions.create(model="demo-chat", \\
messages=[{{"role": "user", "content": "Hi"}}]); print(r.choices[0].message.content)'

Console: opsctl tui (fleet overview, registry, rollouts, usage SQL, orgs and keys; q quits)
Admin: opsctl --help (it finds this gateway and its admin token in the state dir). Ctrl-C stops everything.
"""


def ready_record(base_url: str, key: str, started_s: float, state_dir: Path, token_file: Path | None) -> dict:
    """What `opsctl up --output json` prints once ready (one line)."""
    return {"status": "up", "gateway_url": base_url, "endpoint": f"{base_url}/v1", "api_key": key,
            "models": [name for name, _, _ in DEMO_MODELS], "state_dir": str(state_dir),
            "admin_token_file": str(token_file) if token_file else None, "pid": os.getpid(),
            "started_s": round(started_s, 2)}


def run_up(settings: Settings, *, json_output: bool = False, ready_file: Path | None = None) -> int:
    """Start the stack, print how to use it, and wait for Ctrl-C or SIGTERM.

    Returns:
        0 after a requested stop, 1 when a child process died.

    Raises:
        StackRunning: another `opsctl up` runs from this state dir (it is left alone).
        StackError: the port is taken or the stack did not start.
        StateDirError: the state dir is not usable.
    """
    started = time.monotonic()
    state_dir = Path(settings.state_dir).resolve()
    settings = settings.replace(state_dir=state_dir)
    base_url = f"http://{settings.host}:{settings.port}"
    previous_umask = os.umask(PRIVATE_UMASK)
    lock = StackLock(state_dir)
    url_file = state_dir / GATEWAY_URL_FILE
    try:
        make_private(state_dir)
        lock.acquire(base_url)  # before touching anything a running stack uses
        check_port_free(settings.host, settings.port)
        (state_dir / "logs").mkdir(mode=0o700, exist_ok=True)
        write_private(url_file, base_url)
        return _run(settings, state_dir, base_url, started, json_output, ready_file)
    finally:
        if lock.held:
            if read_value(url_file) == base_url:
                url_file.unlink(missing_ok=True)  # clients fall back to the default instead of a dead URL
            lock.release()
        os.umask(previous_umask)


def _run(settings: Settings, state_dir: Path, base_url: str, started: float, json_output: bool,
         ready_file: Path | None) -> int:
    from opsctl.deploy.local import LocalDeployer

    token, token_file = admin_token_for(settings)
    stack = Stack(settings, state_dir / "logs")
    # The demo pods: processes of this one (in sessions of their own), their history in the gateway.
    deployer = LocalDeployer(AdminClient(base_url, token), state_dir, timeout_s=POD_READY_TIMEOUT_S)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        env = {"FLEETGATE_ADMIN_TOKEN": token, "FLEETGATE_STATE_DIR": str(state_dir),
               "FLEETGATE_DATABASE_URL": settings.database_url, "FLEETGATE_LAKE_URL": settings.lake_url,
               "FLEETGATE_PORT": str(settings.port), "FLEETGATE_HOST": settings.host,
               "FLEETGATE_HEALTH_INTERVAL_S": "2"}
        stack.spawn("gateway", ["-m", "opsctl", "gateway", "serve"], env=env)
        stack.wait_http("gateway", base_url, "/v1/status/readyz", cancelled=lambda: stopping)
        pods = start_demo_pods(deployer)
        with AdminClient(base_url, token) as client:
            key = _ensure_demo(client, state_dir, pods)
        elapsed = time.monotonic() - started
        if json_output:
            print(json.dumps(ready_record(base_url, key, elapsed, state_dir, token_file)), flush=True)
        else:
            print(banner(base_url, key, elapsed, state_dir, token_file), flush=True)
        if ready_file is not None:
            ready_file.write_text(base_url)
        while not stopping:
            for name, proc in stack.procs:
                if proc.poll() is not None:
                    print(f"error: {name} exited with {proc.returncode}; stopping the stack "
                          f"(log: {stack.log_dir / name}.log)",
                          file=sys.stderr)
                    return 1
            # A pod that exits is not fatal: a rollout may have pruned it, and the gateway's prober
            # takes a crashed one out of routing. Only collect its exit status.
            deployer.reap()
            time.sleep(0.2)
        print("stopping…", file=sys.stderr, flush=True)
        return 0
    finally:
        try:
            deployer.stop_all()  # every pod of this state dir's local releases, canaries included
        finally:
            deployer.close()
            stack.stop()
