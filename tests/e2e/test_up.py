"""`opsctl up` as a real process: it serves the SDK, stops cleanly, and reuses its state."""

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
        children = _stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert children, "opsctl up should have started the gateway and pods as children"
    wait_for(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                             for pid in children), timeout=10, what="children to exit")
    assert (state_dir / "admin_token").stat().st_mode & 0o077 == 0

    # Second run reuses the state: same key still works.
    proc = _start(state_dir, port)
    try:
        _, key2, _ = _read_banner(proc)
        assert key2 == key
        r = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
        _stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
