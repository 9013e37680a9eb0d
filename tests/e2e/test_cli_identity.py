"""opsctl user / service-account / oauth / login / logout / whoami against a real `opsctl gateway serve`.

Login stores a token per gateway in a private file; every later command uses it unless --admin-token or
FLEETGATE_ADMIN_TOKEN say otherwise, and an expired login is a clear error, never a silent fall-back.
"""

from __future__ import annotations

import json
import stat

import httpx
import pytest

from tests.e2e.conftest import cli, module_gateway

TOKEN = "fg-admin-cli-identity"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    with module_gateway(tmp_path_factory.mktemp("cli-identity") / "state", TOKEN) as gw:
        yield gw.url


@pytest.fixture
def credentials(tmp_path, monkeypatch):
    path = tmp_path / "config" / "fleetgate" / "credentials.json"
    monkeypatch.setenv("FLEETGATE_CREDENTIALS", str(path))
    return path


@pytest.fixture
def opsctl(gateway, credentials, monkeypatch):
    return cli(gateway, TOKEN, monkeypatch)


def as_json(result) -> dict | list:
    return json.loads(result.stdout)


def test_user_and_personal_token_commands(opsctl):
    opsctl("org", "create", "idorg")
    user = as_json(opsctl("user", "create", "ann", "--role", "viewer", "--org", "idorg", "--email", "ann@example.com",
                          "-o", "json"))
    assert (user["name"], user["role"], user["status"]) == ("ann", "viewer", "active")
    assert "already exists" in opsctl("user", "create", "ann", "--role", "viewer", code=2).output
    assert "ann" in opsctl("user", "list", "--org", "idorg").stdout
    assert as_json(opsctl("user", "show", "ann", "-o", "json"))["id"] == user["id"]
    assert as_json(opsctl("user", "set-role", "ann", "operator", "-o", "json"))["role"] == "operator"
    assert as_json(opsctl("user", "disable", "ann", "-o", "json"))["status"] == "disabled"
    assert as_json(opsctl("user", "enable", "ann", "-o", "json"))["status"] == "active"
    opsctl("user", "create", "bad", "--role", "root", code=2)
    opsctl("user", "create", "bad name!", "--role", "viewer", code=2)
    opsctl("user", "create", "x", "--role", "viewer", "--email", "nope", code=2)
    opsctl("user", "set-role", "ann", "king", code=2)
    assert "not found" in opsctl("user", "show", "nobody", code=2).output

    created = as_json(opsctl("user", "token", "create", "ann", "--name", "laptop", "--expires-in", "7d", "-o", "json"))
    assert created["token"].startswith("fgp_") and created["status"] == "active"
    table = opsctl("user", "token", "create", "ann").stdout
    assert "shown once" in table and "fgp_" in table
    listed = as_json(opsctl("user", "token", "list", "ann", "-o", "json"))
    assert [t["name"] for t in listed] == ["laptop", "default"]
    assert all("token" not in t for t in listed)
    revoked = as_json(opsctl("user", "token", "revoke", "ann", created["id"], "-o", "json"))
    assert revoked["status"] == "revoked"
    opsctl("user", "token", "create", "ann", "--expires-in", "400d", code=2)
    opsctl("user", "token", "create", "ann", "--expires-in", "soon", code=2)
    opsctl("user", "token", "revoke", "ann", "tok_0000000000000000", code=2)
    opsctl("user", "token", "list", "nobody", code=2)


def test_service_account_and_oauth_commands(opsctl):
    created = as_json(opsctl("service-account", "create", "deployer", "--role", "operator", "-o", "json"))
    assert created["client_id"].startswith("fgc_") and created["client_secret"].startswith("fgs_")
    table = opsctl("service-account", "create", "other-bot", "--role", "viewer").stdout
    assert "client_secret (shown once" in table
    listed = as_json(opsctl("service-account", "list", "-o", "json"))
    assert {"deployer", "other-bot"} <= {a["name"] for a in listed} and all("client_secret" not in a for a in listed)
    assert as_json(opsctl("service-account", "show", "deployer", "-o", "json"))["client_id"] == created["client_id"]
    assert as_json(opsctl("service-account", "set-role", "deployer", "admin", "-o", "json"))["role"] == "admin"
    assert as_json(opsctl("service-account", "disable", "deployer", "-o", "json"))["status"] == "disabled"
    assert as_json(opsctl("service-account", "enable", "deployer", "-o", "json"))["status"] == "active"
    rotated = as_json(opsctl("service-account", "rotate-secret", "deployer", "-o", "json"))
    assert rotated["client_secret"] != created["client_secret"]
    opsctl("service-account", "create", "x", "--role", "root", code=2)
    opsctl("service-account", "create", "x", "--role", "viewer", "--org", "no-such-org", code=2)
    opsctl("service-account", "show", "nope", code=2)

    rotation = as_json(opsctl("oauth", "rotate-key", "-o", "json"))
    keys = as_json(opsctl("oauth", "keys", "-o", "json"))
    assert keys[0]["kid"] == rotation["kid"] and keys[0]["status"] == "current"
    assert "kid" in opsctl("oauth", "keys").stdout.lower()


def test_login_with_client_credentials(opsctl, gateway, credentials, monkeypatch):
    account = as_json(opsctl("service-account", "create", "ci-login", "--role", "admin", "-o", "json"))
    monkeypatch.delenv("FLEETGATE_ADMIN_TOKEN")
    out = as_json(opsctl("login", "--client-id", account["client_id"], "--client-secret-stdin", "-o", "json",
                         input=account["client_secret"] + "\n"))
    assert (out["kind"], out["name"], out["role"]) == ("service_account", "ci-login", "admin")
    assert out["gateway_url"] == gateway and out["credentials"] == str(credentials)
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert stat.S_IMODE(credentials.parent.stat().st_mode) == 0o700
    stored = json.loads(credentials.read_text())[gateway]
    assert stored["kind"] == "service_account" and stored["client_id"] == account["client_id"]
    assert account["client_secret"] not in credentials.read_text()  # only the access token is kept

    # Every command now uses the stored token.
    me = as_json(opsctl("whoami", "-o", "json"))
    assert (me["kind"], me["name"]) == ("service_account", "ci-login")
    opsctl("org", "create", "made-by-login")
    audit = httpx.get(gateway + "/admin/v1/audit", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert audit[0]["actor"] == "service_account:ci-login"
    # --admin-token and FLEETGATE_ADMIN_TOKEN come before the stored login.
    assert as_json(opsctl("whoami", "--admin-token", TOKEN, "-o", "json"))["kind"] == "bootstrap"
    monkeypatch.setenv("FLEETGATE_ADMIN_TOKEN", TOKEN)
    assert as_json(opsctl("whoami", "-o", "json"))["kind"] == "bootstrap"
    monkeypatch.delenv("FLEETGATE_ADMIN_TOKEN")

    # The secret from the environment works too; a wrong one changes nothing stored.
    monkeypatch.setenv("FLEETGATE_CLIENT_SECRET", "fgs_wrong")
    before = credentials.read_text()
    result = opsctl("login", "--client-id", account["client_id"], code=2)
    assert "Client authentication failed" in result.output and "fgs_wrong" not in result.output
    assert credentials.read_text() == before
    monkeypatch.setenv("FLEETGATE_CLIENT_SECRET", account["client_secret"])
    opsctl("login", "--client-id", account["client_id"])
    monkeypatch.delenv("FLEETGATE_CLIENT_SECRET")
    assert "--client-id" in opsctl("login", code=2).output
    assert "stdin held no secret" in opsctl("login", "--client-id", account["client_id"], "--client-secret-stdin",
                                            input="", code=2).output

    # An expired login is a clear error, not a fall-back to some other identity.
    data = json.loads(credentials.read_text())
    data[gateway]["expires_at"] = "2020-01-01T00:00:00+00:00"
    credentials.write_text(json.dumps(data))
    assert "run opsctl login" in opsctl("whoami", code=2).output

    out = as_json(opsctl("logout", "-o", "json"))
    assert out["logged_out"] is True and gateway not in json.loads(credentials.read_text())
    assert as_json(opsctl("logout", "-o", "json"))["logged_out"] is False
    assert "admin" in opsctl("whoami", code=2).output  # no token at all now: 401 from the gateway


def test_login_with_a_personal_token(opsctl, gateway, credentials, monkeypatch):
    opsctl("user", "create", "pat", "--role", "operator")
    token = as_json(opsctl("user", "token", "create", "pat", "--expires-in", "1d", "-o", "json"))
    monkeypatch.delenv("FLEETGATE_ADMIN_TOKEN")
    out = as_json(opsctl("login", "--with-token", "-o", "json", input=token["token"] + "\n"))
    assert (out["kind"], out["name"], out["expires_at"]) == ("user", "pat", token["expires_at"])
    assert as_json(opsctl("whoami", "-o", "json"))["actor"] == "user:pat"
    assert "cannot be combined" in opsctl("login", "--with-token", "--client-id", "x", code=2).output
    result = opsctl("login", "--with-token", input="fgp_not-a-real-token\n", code=2)
    assert "personal admin token" in result.output and "fgp_not-a-real-token" not in result.output
    assert json.loads(credentials.read_text())[gateway]["token"] == token["token"]  # the failed login kept it
