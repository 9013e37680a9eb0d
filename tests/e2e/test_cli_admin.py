"""opsctl against a real gateway process: happy paths, JSON output, and bad input → exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from typer.testing import CliRunner

from opsctl.cli import app
from tests.support import free_port, wait_for

TOKEN = "fg-admin-cli-test"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    state = tmp_path_factory.mktemp("cli-state")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    env.update(FLEETGATE_ADMIN_TOKEN=TOKEN, FLEETGATE_STATE_DIR=str(state), FLEETGATE_PORT=str(port),
               FLEETGATE_USAGE_SINK="none")
    proc = subprocess.Popen([sys.executable, "-m", "opsctl", "gateway", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(url + "/v1/status/readyz").status_code == 200, timeout=30, what="gateway")
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.fixture
def opsctl(gateway, monkeypatch):
    monkeypatch.setenv("FLEETGATE_GATEWAY_URL", gateway)
    monkeypatch.setenv("FLEETGATE_ADMIN_TOKEN", TOKEN)
    runner = CliRunner()

    def run(*args: str, code: int = 0):
        result = runner.invoke(app, list(args))
        assert result.exit_code == code, f"{args} → {result.exit_code}\n{result.output}"
        return result

    return run


def test_org_commands(opsctl):
    out = opsctl("org", "create", "cli-org", "--rpm", "100", "-o", "json")
    org = json.loads(out.stdout)
    assert org["name"] == "cli-org" and org["rpm_limit"] == 100
    assert "already exists" in opsctl("org", "create", "cli-org", code=2).output
    assert "cli-org" in opsctl("org", "list").stdout
    assert json.loads(opsctl("org", "show", "cli-org", "-o", "json").stdout)["id"] == org["id"]
    assert "not found" in opsctl("org", "show", "no-such-org", code=2).output
    assert opsctl("org", "create", "bad name!", code=2).output.startswith("error:")
    opsctl("org", "create", "x", "--rpm", "0", code=2)
    opsctl("org", "create", code=2)  # missing NAME


def test_key_commands(opsctl):
    opsctl("org", "create", "key-org")
    created = json.loads(opsctl("key", "create", "--org", "key-org", "--name", "ci", "--models", "m1,m2",
                                "--expires-in", "30d", "-o", "json").stdout)
    assert created["key"].startswith("sk-fg-") and created["allowed_models"] == ["m1", "m2"]
    listed = json.loads(opsctl("key", "list", "--org", "key-org", "-o", "json").stdout)
    assert [k["id"] for k in listed] == [created["id"]]
    assert all("key" not in k and "key_hash" not in k for k in listed)
    table = opsctl("key", "create", "--org", "key-org").stdout
    assert "shown once" in table
    revoked = json.loads(opsctl("key", "revoke", created["id"], "-o", "json").stdout)
    assert revoked["status"] == "revoked"
    opsctl("key", "revoke", "key_doesnotexist", code=2)
    opsctl("key", "create", "--org", "no-such-org", code=2)
    opsctl("key", "create", "--org", "key-org", "--rpm", "-5", code=2)
    opsctl("key", "create", "--org", "key-org", "--expires-in", "soon", code=2)
    opsctl("key", "create", code=2)  # missing --org


def test_registry_commands(opsctl):
    out = json.loads(opsctl("registry", "register", "reg-m", "--endpoint", "http://127.0.0.1:9", "--env", "staging",
                            "--input-price", "1.5", "--output-price", "3", "--max-tokens", "128",
                            "-o", "json").stdout)
    assert out["name"] == "reg-m" and out["environment"] == "staging" and out["input_price"] == 1.5
    assert [e["url"] for e in out["endpoints"]] == ["http://127.0.0.1:9"]
    listed = json.loads(opsctl("registry", "list", "--env", "staging", "-o", "json").stdout)
    assert [m["name"] for m in listed] == ["reg-m"]
    opsctl("registry", "disable", "reg-m", "--env", "staging")
    listed = json.loads(opsctl("registry", "list", "--env", "staging", "-o", "json").stdout)
    assert listed[0]["status"] == "disabled"
    opsctl("registry", "enable", "reg-m", "--env", "staging")
    drained = json.loads(opsctl("registry", "drain", "reg-m", "--env", "staging", "--endpoint",
                                "http://127.0.0.1:9", "-o", "json").stdout)
    assert drained["status"] == "draining"
    opsctl("registry", "register", "reg-m", "--endpoint", "ftp://x", code=2)
    opsctl("registry", "register", "reg-m", "--endpoint", "http://h:1", "--weight", "-1", code=2)
    opsctl("registry", "register", "reg-m", "--input-price", "-1", code=2)
    opsctl("registry", "disable", "reg-m", "--env", "staging", "--endpoint", "http://other:1", code=2)
    opsctl("registry", "deregister", "nope", "--env", "staging", code=2)
    opsctl("registry", "deregister", "reg-m", "--env", "staging")
    assert json.loads(opsctl("registry", "list", "--env", "staging", "-o", "json").stdout) == []


def test_budget_commands(opsctl):
    opsctl("org", "create", "budget-org")
    out = json.loads(opsctl("budget", "set", "budget-org", "12.5", "--period", "daily", "-o", "json").stdout)
    assert out["limit_micros"] == 12_500_000 and out["period"] == "daily"
    shown = json.loads(opsctl("budget", "show", "budget-org", "-o", "json").stdout)
    assert shown[0]["remaining_usd"] == 12.5 and shown[0]["resets_at"]
    opsctl("budget", "set", "budget-org", "-3", "--period", "daily", code=2)
    opsctl("budget", "set", "budget-org", "5", "--period", "weekly", code=2)
    opsctl("budget", "set", "no-such-org", "5", code=2)
    opsctl("budget", "show", "no-such-org", code=2)


def test_auth_and_reachability_errors(gateway, monkeypatch):
    runner = CliRunner()
    monkeypatch.setenv("FLEETGATE_GATEWAY_URL", gateway)
    monkeypatch.setenv("FLEETGATE_ADMIN_TOKEN", "wrong")
    result = runner.invoke(app, ["org", "list"])
    assert result.exit_code == 2 and "admin token" in result.output and "wrong" not in result.output
    monkeypatch.setenv("FLEETGATE_GATEWAY_URL", f"http://127.0.0.1:{free_port()}")
    result = runner.invoke(app, ["org", "list"])
    assert result.exit_code == 1 and "cannot reach the gateway" in result.output
    monkeypatch.setenv("FLEETGATE_PORT", "not-a-port")
    result = runner.invoke(app, ["org", "list"])
    assert result.exit_code == 2 and "port" in result.output
