"""`opsctl up` and its state dir: one stack per dir, private files, clients find it, user data survives.

Every test drives real `opsctl up` processes (gateway and simulated pods as children).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.support import free_port, wait_for


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    return {**env, **extra}


def _start(state_dir: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "opsctl", "up", "--port", str(port), "--state-dir", str(state_dir), "-o", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )


def _ready(proc: subprocess.Popen) -> dict:
    """The one JSON line `opsctl up --output json` prints once the stack serves."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"opsctl up exited early: {proc.stderr.read()}")
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError("opsctl up printed no ready record")


def _stop(proc: subprocess.Popen) -> None:
    processes = psutil.Process(proc.pid).children(recursive=True)
    children = [c.pid for c in processes]
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    if code != 0:  # no pod may outlive the test: they run in sessions of their own
        for child in processes:
            try:
                child.kill()  # psutil checks it is still the same process (no reused pid)
            except psutil.NoSuchProcess:
                pass
    assert code == 0
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                             for p in children), timeout=15, what="the stack's children to exit")


def _opsctl(state_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """opsctl as a user runs it next to `opsctl up`: only the state dir, no URL, no token."""
    return subprocess.run([sys.executable, "-m", "opsctl", *args], capture_output=True, text=True, timeout=60,
                          env=_env(FLEETGATE_STATE_DIR=str(state_dir), **env))


def _registry(state_dir: Path) -> dict[str, list[tuple[str, str]]]:
    out = _opsctl(state_dir, "registry", "list", "-o", "json")
    assert out.returncode == 0, out.stderr
    return {m["name"]: sorted((e["release"], e["url"]) for e in m["endpoints"]) for m in json.loads(out.stdout)}


def _chat(ready: dict) -> int:
    r = httpx.post(ready["endpoint"] + "/chat/completions", timeout=30,
                   headers={"Authorization": f"Bearer {ready['api_key']}"},
                   json={"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]})
    return r.status_code


def _modes(root: Path) -> dict[str, str]:
    found = {str(root): oct(stat.S_IMODE(root.stat().st_mode))}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return found


def test_second_up_is_refused_and_leaves_the_running_stack_alone(tmp_path):
    state, port = tmp_path / "state", free_port()
    # A state dir left by an older version: world-readable, with a readable admin token.
    state.mkdir()
    state.chmod(0o755)
    (state / "admin_token").write_text("fg-admin-from-before\n")
    (state / "admin_token").chmod(0o644)
    proc = _start(state, port)
    try:
        ready = _ready(proc)
        url = f"http://127.0.0.1:{port}"
        assert ready["gateway_url"] == url and ready["pid"] == proc.pid
        assert ready["admin_token_file"] == str(state / "admin_token") and ready["state_dir"] == str(state)
        assert (state / "gateway_url").read_text().strip() == url
        registry = _registry(state)  # found through <state>/gateway_url and <state>/admin_token
        assert {name: [release for release, _ in eps] for name, eps in registry.items()} == {
            "demo-chat": ["demo-chat-production"], "demo-embed": ["demo-embed-production"]}

        second = subprocess.run([sys.executable, "-m", "opsctl", "up", "--port", str(free_port()),
                                 "--state-dir", str(state)], capture_output=True, text=True, timeout=60, env=_env())
        assert second.returncode == 1 and second.stdout == ""
        assert second.stderr.strip() == (f"error: Fleetgate is already running from {state} (pid {proc.pid}, "
                                         f"serving {url}); stop it first, or pass another --state-dir")
        assert _registry(state) == registry  # its pods were not re-pointed
        assert _chat(ready) == 200 and proc.poll() is None

        other = tmp_path / "other"
        third = subprocess.run([sys.executable, "-m", "opsctl", "up", "--port", str(port), "--state-dir", str(other)],
                               capture_output=True, text=True, timeout=60, env=_env())
        assert third.returncode == 1
        assert third.stderr.startswith(f"error: port {port} on 127.0.0.1 is already in use")
        assert not (other / "logs").exists()  # refused before starting anything
        assert _chat(ready) == 200

        # Usage reaches the lake, then every file in the state dir is private.
        assert json.loads(_opsctl(state, "lake", "flush", "-o", "json").stdout)["gateway"] is True
        modes = _modes(state)
        assert {"fleetgate.db", "logs/gateway.log", "admin_token", "demo_key", "up.lock",
                "releases/demo-chat-production/r1-0.log", "releases/demo-chat-production/r1-0.pid"} <= set(modes)
        assert any(name.endswith(".parquet") for name in modes) and any("/seg-" in name for name in modes)
        for path, mode in modes.items():
            is_dir = (state / path).is_dir() if path != str(state) else True
            assert mode == ("0o700" if is_dir else "0o600"), f"{path} is {mode}"
        assert (state / "admin_token").read_text().strip() == "fg-admin-from-before"  # reused, not replaced
    finally:
        if proc.poll() is None:
            _stop(proc)
    assert not (state / "gateway_url").exists()  # clients no longer aim at a stopped stack


def test_up_keeps_endpoints_a_user_registered_on_demo_models(tmp_path):
    state, port = tmp_path / "state", free_port()
    mine = f"http://127.0.0.1:{free_port()}"
    legacy = f"http://127.0.0.1:{free_port()}"
    proc = _start(state, port)
    try:
        _ready(proc)
        out = _opsctl(state, "registry", "register", "demo-chat", "--endpoint", mine, "--release", "mine",
                      "--weight", "0", "--input-price", "0.7")
        assert out.returncode == 0, out.stderr
        # what an `opsctl up` from before the LocalDeployer registered: its pods are gone
        out = _opsctl(state, "registry", "register", "demo-chat", "--endpoint", legacy, "--release", "opsctl-up")
        assert out.returncode == 0, out.stderr
        first = _registry(state)["demo-chat"]
    finally:
        _stop(proc)
    [old_pod] = [u for r, u in first if r == "demo-chat-production"]
    # Something else took the pod's port meanwhile: the restarted pod gets another one.
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the pod's connections linger in TIME_WAIT
    squatter.bind(("127.0.0.1", int(old_pod.rsplit(":", 1)[1])))
    squatter.listen()
    try:
        proc = _start(state, port)
        try:
            ready = _ready(proc)
            again = _registry(state)["demo-chat"]
            prices = json.loads(_opsctl(state, "registry", "list", "-o", "json").stdout)
            assert _chat(ready) == 200
        finally:
            _stop(proc)
    finally:
        squatter.close()
    new_pods = [u for r, u in again if r == "demo-chat-production"]
    assert ("mine", mine) in again  # the user's endpoint survived the restart
    assert len(new_pods) == 1 and new_pods != [old_pod]  # only our own stale pod was replaced
    assert not any(r == "opsctl-up" for r, _ in again)  # and the old version's dead one removed
    assert next(m for m in prices if m["name"] == "demo-chat")["input_price"] == 0.7  # a user's price stays
    assert ready["api_key"]


def test_up_refuses_a_shared_state_dir_and_leaves_it_alone(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: tightening it would lock other users out
    out = subprocess.run([sys.executable, "-m", "opsctl", "up", "--port", str(free_port()), "--state-dir",
                          str(shared)], capture_output=True, text=True, timeout=60, env=_env())
    assert out.returncode == 2
    assert out.stderr.strip() == (f"error: the state dir {shared} is shared or belongs to another user; "
                                  "pass --state-dir with a directory of its own")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777 and list(shared.iterdir()) == []
