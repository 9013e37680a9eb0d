"""`opsctl up` as a real process: it serves the SDK, stops cleanly, and reuses its state.

Its demo pods are LocalDeployer releases (simulator): stopped with the stack, restarted by the next `up`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import psutil
from openai import OpenAI

from tests.support import free_port, wait_for


def _start(state_dir, port):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    return subprocess.Popen(
        [sys.executable, "-m", "opsctl", "up", "--port", str(port), "--state-dir", str(state_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )


def _read_banner(proc) -> tuple[str, str, str]:
    lines = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"opsctl up exited early:\n{''.join(lines)}")
        lines.append(line)
        if line.startswith("Admin:"):
            text = "".join(lines)
            endpoint = re.search(r"endpoint\s+(\S+)", text).group(1)
            key = re.search(r"api key\s+(\S+)", text).group(1)
            return endpoint, key, text
    raise AssertionError("no banner from opsctl up")


def _stop(proc) -> list[int]:
    children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    return children


def _kill(proc) -> None:
    """After a failure: kill `opsctl up` and its children (the pods run in sessions of their own)."""
    if proc.poll() is not None:
        return
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.wait()
    for child in children:
        try:
            child.kill()
            child.wait(10)
        except psutil.NoSuchProcess:
            pass


def _pods(children: list[int]) -> dict[str, int]:
    """The simulator pods among `up`'s children: model → pid."""
    pods = {}
    for pid in children:
        try:
            argv = psutil.Process(pid).cmdline()
        except psutil.NoSuchProcess:
            continue
        if argv[1:3] == ["-m", "opsctl.sim"]:
            pods[argv[argv.index("--model") + 1]] = pid
    return pods


def _gone(pids) -> bool:
    return not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)


def test_up_serves_the_sdk_then_stops_everything(tmp_path):
    state_dir, port = tmp_path / "state", free_port()
    proc = _start(state_dir, port)
    try:
        endpoint, key, text = _read_banner(proc)
        assert endpoint == f"http://127.0.0.1:{port}/v1"
        # Lines to copy: the key as $KEY (the README tour uses it), where the state and the admin token are.
        assert f"  export KEY={key}\n" in text and f"OPENAI_API_KEY={key}" in text
        assert f"state dir    {state_dir.resolve()}" in text
        assert f"admin token  {state_dir.resolve() / 'admin_token'}" in text
        assert f"export FLEETGATE_STATE_DIR={state_dir.resolve()}" in text
        client = OpenAI(base_url=endpoint, api_key=key, max_retries=0)
        assert {m.id for m in client.models.list().data} == {"demo-chat", "demo-embed"}
        reply = client.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
        assert client.embeddings.create(model="demo-embed", input="x").data[0].embedding
        # The lake sees both requests once the running gateway flushes (opsctl finds the token).
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
        env.update(FLEETGATE_STATE_DIR=str(state_dir), FLEETGATE_GATEWAY_URL=f"http://127.0.0.1:{port}")
        opsctl = [sys.executable, "-m", "opsctl"]
        flushed = subprocess.run([*opsctl, "lake", "flush", "-o", "json"], env=env, capture_output=True,
                                 text=True, check=True)
        assert '"gateway": true' in flushed.stdout
        counted = subprocess.run([*opsctl, "sql", "select model, count(*) as n from usage group by 1 order by 1",
                                  "--format", "json"], env=env, capture_output=True, text=True, check=True)
        assert json.loads(counted.stdout) == [{"model": "demo-chat", "n": 1}, {"model": "demo-embed", "n": 1}]
        # The pods are the releases the deployer reports, registered under their release names.
        status = subprocess.run([*opsctl, "deployment", "status", "demo-chat", "--env", "production", "-o", "json"],
                                env=env, capture_output=True, text=True, check=True)
        deployment = json.loads(status.stdout)
        assert deployment["release"] == "demo-chat-production" and deployment["deployment"]["ready"] is True
        assert [e["release"] for e in deployment["registry"]["endpoints"]] == ["demo-chat-production"]
        pod_url = deployment["registry"]["endpoints"][0]["url"]
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        first_pods = _pods(children)
        children = _stop(proc)
    finally:
        _kill(proc)
    assert set(first_pods) == {"demo-chat", "demo-embed"}, "opsctl up should have started the pods as children"
    assert set(first_pods.values()) <= set(children)
    wait_for(lambda: _gone(children), timeout=10, what="children to exit")
    assert (state_dir / "admin_token").stat().st_mode & 0o077 == 0

    # Second run reuses the state: same key still works; the demo releases are restarted (new processes on
    # their old ports, so the registry's endpoints stay), and stopped again with the stack.
    proc = _start(state_dir, port)
    try:
        _, key2, _ = _read_banner(proc)
        assert key2 == key
        r = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
        reply = client.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": "again"}])
        assert reply.choices[0].message.content
        assert httpx.get(pod_url + "/health").status_code == 200
        history = subprocess.run([*opsctl, "deployment", "history", "demo-chat", "--env", "production", "-o", "json"],
                                 env=env, capture_output=True, text=True, check=True)
        assert [(r["revision"], r["status"]) for r in json.loads(history.stdout)] == [(1, "deployed")]
        second_pods = _pods([c.pid for c in psutil.Process(proc.pid).children(recursive=True)])
        assert set(second_pods) == {"demo-chat", "demo-embed"} and not set(second_pods.values()) & set(children)
        _stop(proc)
    finally:
        _kill(proc)
    wait_for(lambda: _gone(second_pods.values()), timeout=10, what="the restarted pods to exit")
