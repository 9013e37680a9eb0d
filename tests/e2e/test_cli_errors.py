"""Servers started from opsctl fail to start with one readable line and exit 1, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from analytics_lake.spool_files import acquire_lock, release_lock
from tests.support import free_port


@pytest.fixture
def busy_port():
    """A port something else already listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _opsctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    return subprocess.run([sys.executable, "-m", "opsctl", *args], capture_output=True, text=True, timeout=60,
                          env={**base, **(env or {})})


def _one_line_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.stderr
    return errors[0]


def test_sim_serve_on_a_port_in_use(busy_port):
    line = _one_line_error(_opsctl("sim", "serve", "--model", "m", "--port", str(busy_port)))
    assert f"port {busy_port} on 127.0.0.1 is already in use" in line
    out = subprocess.run([sys.executable, "-m", "opsctl.sim", "--model", "m", "--port", str(busy_port)],
                         capture_output=True, text=True, timeout=60)  # how opsctl up and the deployer start pods
    assert f"port {busy_port} on 127.0.0.1 is already in use" in _one_line_error(out)


def test_gateway_serve_on_a_port_in_use(busy_port, tmp_path):
    out = _opsctl("gateway", "serve", "--port", str(busy_port),
                  env={"FLEETGATE_STATE_DIR": str(tmp_path / "state"), "FLEETGATE_ADMIN_TOKEN": "t"})
    assert f"port {busy_port} on 127.0.0.1 is already in use" in _one_line_error(out)


def test_gateway_serve_while_its_spool_is_locked(tmp_path):
    """Two gateways on one state dir and port: the second must say so, not dump a traceback."""
    port = free_port()
    spool = tmp_path / "state" / "spool" / f"gw{port}-0"
    fd = acquire_lock(spool)  # what a running gateway holds
    try:
        out = _opsctl("gateway", "serve", "--port", str(port),
                      env={"FLEETGATE_STATE_DIR": str(tmp_path / "state"), "FLEETGATE_ADMIN_TOKEN": "t"})
    finally:
        release_lock(fd)
    line = _one_line_error(out)
    assert f"usage spool {spool} is locked by another running gateway" in line
