"""Where opsctl finds the gateway: --gateway > FLEETGATE_GATEWAY_URL > the state dir's record > default.

`opsctl up --port 9090` records its URL in `<state>/gateway_url`; every client of that state
dir then talks to 9090 without flags. An admin command stays light (no aiohttp, httpx, …).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from gateway.settings import load_settings
from opsctl.client import DEFAULT_GATEWAY_URL, find_gateway_url
from opsctl.state import ADMIN_TOKEN_FILE, GATEWAY_URL_FILE, write_private
from tests.e2e.conftest import E2E_TOKEN
from tests.support import free_port
from tests.unit.test_cli_startup import HEAVY


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    return {**env, **extra}


def _opsctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opsctl", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def test_precedence_flag_env_state_dir(gateway_factory, tmp_path):
    gw = gateway_factory()
    state = tmp_path / "state"  # the gateway's own state dir; opsctl reads the same one
    write_private(state / GATEWAY_URL_FILE, gw.url)  # what opsctl up writes: its URL and admin token
    write_private(state / ADMIN_TOKEN_FILE, E2E_TOKEN)
    dead = f"http://127.0.0.1:{free_port()}"

    recorded = _opsctl("org", "list", "-o", "json", env=_env(FLEETGATE_STATE_DIR=str(state)))
    assert recorded.returncode == 0, recorded.stderr  # found through the state dir: no flag, no env
    assert json.loads(recorded.stdout) == []

    env_wins = _opsctl("org", "list", env=_env(FLEETGATE_STATE_DIR=str(state), FLEETGATE_GATEWAY_URL=dead))
    assert env_wins.returncode == 1
    assert env_wins.stderr.strip() == (f"error: cannot reach the gateway at {dead} (ConnectionRefusedError; "
                                       "URL from the gateway_url setting (FLEETGATE_GATEWAY_URL))")

    flag_wins = _opsctl("org", "list", "--gateway", gw.url, env=_env(FLEETGATE_STATE_DIR=str(state),
                                                                     FLEETGATE_GATEWAY_URL=dead))
    assert flag_wins.returncode == 0, flag_wins.stderr

    write_private(state / GATEWAY_URL_FILE, dead)  # a stack that is gone: the message says where the URL came from
    stale = _opsctl("org", "list", env=_env(FLEETGATE_STATE_DIR=str(state)))
    assert stale.returncode == 1
    assert f"URL from {state / GATEWAY_URL_FILE}, written by opsctl up: is it still running?" in stale.stderr


def test_default_without_flag_env_or_record(tmp_path):
    settings = load_settings(env={"FLEETGATE_STATE_DIR": str(tmp_path / "empty")})
    url, source = find_gateway_url(settings)
    assert url == DEFAULT_GATEWAY_URL == "http://127.0.0.1:8080" and source.startswith("the default URL")
    assert find_gateway_url(settings, "http://h:1") == ("http://h:1", "URL from --gateway")


def test_admin_command_loads_nothing_heavy(gateway_factory):
    gw = gateway_factory()
    code = textwrap.dedent("""
        import json, sys
        from opsctl.cli import main
        sys.argv = ["opsctl", "org", "create", "light", "-o", "json"]
        try:
            main()
        except SystemExit as e:
            assert e.code == 0, e.code
        print(json.dumps(sorted(sys.modules)))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=_env(FLEETGATE_GATEWAY_URL=gw.url, FLEETGATE_ADMIN_TOKEN=E2E_TOKEN))
    assert out.returncode == 0, out.stderr
    assert '"name": "light"' in out.stdout  # it really talked to the gateway
    modules = json.loads(out.stdout.splitlines()[-1])
    assert sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)) == []
