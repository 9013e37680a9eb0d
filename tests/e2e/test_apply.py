"""`opsctl apply` and `opsctl export` against a real gateway process: plans, idempotence, ownership and
prune, all-or-nothing on bad files, and where the secrets of new keys and service accounts go."""

from __future__ import annotations

import json
import os
import pty
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from opsctl.cli import app
from tests.e2e.conftest import E2E_TOKEN

BASE = """\
apiVersion: fleetgate/v1
owner: platform
orgs:
  - {name: acme, rpm_limit: 600}
users:
  - {name: alice, role: operator, org: acme, email: alice@example.com}
service_accounts:
  - {name: deployer, role: operator}
keys:
  - {org: acme, name: web, rpm_limit: 60, models: [llama]}
  - {org: acme, name: batch, tpm_limit: 1000}
budgets:
  - {org: acme, usd: 100}
  - {org: acme, key: web, usd: 5, period: daily}
models:
  - name: llama
    input_price: 0.5
    output_price: 1.5
    fallbacks: [gemma]
    endpoints:
      - {url: "http://127.0.0.1:9", weight: 90}
      - {url: "http://127.0.0.1:10", release: canary, weight: 10}
  - name: gemma
"""


@pytest.fixture
def gw(gateway_factory, monkeypatch):
    """A gateway of its own (SQLite in tmp_path) that opsctl finds through the environment."""
    gateway = gateway_factory()
    monkeypatch.setenv("FLEETGATE_GATEWAY_URL", gateway.url)
    monkeypatch.setenv("FLEETGATE_ADMIN_TOKEN", E2E_TOKEN)
    return gateway


@pytest.fixture
def api(gw):
    with gw.admin() as client:
        yield client


def opsctl(*args: str, code: int = 0):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, f"{args} → {result.exit_code}\n{result.output}"
    return result


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def snapshot(api: httpx.Client) -> dict:
    """Everything a config can change, as the admin API lists it."""
    paths = ("organizations", "users", "service-accounts", "api-keys", "budgets", "models", "config/ownership")
    return {p: api.get(f"/admin/v1/{p}").json() for p in paths}


def test_dry_run_changes_nothing_and_a_second_apply_has_no_changes(api, tmp_path):
    config = write(tmp_path / "fleet.yaml", BASE)
    before = snapshot(api)
    plan = opsctl("apply", "-f", str(config), "--dry-run").stdout.splitlines()
    assert plan[:3] == ["+ org acme", "+ user alice", "+ service-account deployer"]
    assert "+ endpoint production/llama http://127.0.0.1:10" in plan
    assert plan[-1] == "dry run: 11 to add, 0 to change, 0 to remove; nothing was changed"
    assert snapshot(api) == before

    applied = opsctl("apply", "-f", str(config), "--secrets-out", str(tmp_path / "secrets.jsonl")).stdout
    assert applied.splitlines()[-1] == "applied: 11 added, 0 changed, 0 removed"
    assert opsctl("apply", "-f", str(config)).stdout == "no changes\n"
    again = json.loads(opsctl("apply", "-f", str(config), "-o", "json").stdout)
    assert again["changes"] == [] and again["summary"] == {"added": 0, "changed": 0, "removed": 0}

    models = {m["name"]: m for m in api.get("/admin/v1/models").json()}
    assert models["llama"]["fallbacks"] == ["gemma"] and models["llama"]["input_price"] == 0.5
    assert sorted(e["weight"] for e in models["llama"]["endpoints"]) == [10, 90]
    owned = api.get("/admin/v1/config/ownership", params={"owner": "platform"}).json()
    assert len(owned) == 11
    records = api.get("/admin/v1/audit", params={"action": "config.apply"}).json()
    assert [r["after"]["summary"]["added"] for r in records] == [0, 0, 11]  # newest first; dry runs not recorded


def test_the_plan_shows_each_changed_field(api, tmp_path):
    config = write(tmp_path / "fleet.yaml", BASE)
    opsctl("apply", "-f", str(config), "--secrets-out", str(tmp_path / "secrets.jsonl"))
    changed = (BASE.replace("rpm_limit: 60, models: [llama]", "rpm_limit: 120, models: [llama, gemma]")
               .replace("weight: 90", "weight: 80").replace("usd: 100", "usd: 250.5")
               .replace("role: operator, org: acme", "role: viewer, org: acme")
               .replace("  - name: gemma\n", "  - {name: gemma, status: disabled}\n"))
    write(config, changed + "    # a comment changes nothing\n")
    plan = opsctl("apply", "-f", str(config), "--dry-run").stdout.splitlines()
    assert plan == [
        "~ user alice: role operator → viewer",
        "~ key acme/web: rpm_limit 60 → 120",
        "~ key acme/web: models [llama] → [gemma, llama]",
        "~ budget acme: usd 100 → 250.5",
        "~ model production/gemma: status active → disabled",
        "~ endpoint production/llama http://127.0.0.1:9: weight 90 → 80",
        "dry run: 0 to add, 5 to change, 0 to remove; nothing was changed",
    ]
    as_json = json.loads(opsctl("apply", "-f", str(config), "-o", "json").stdout)
    key = next(c for c in as_json["changes"] if c["kind"] == "key")
    assert key["name"] == "acme/web" and key["fields"]["rpm_limit"] == {"from": 60, "to": 120}
    assert as_json["result"]["applied"] == {"added": 0, "changed": 5, "removed": 0}
    web = next(k for k in api.get("/admin/v1/api-keys").json() if k["name"] == "web")
    assert web["rpm_limit"] == 120 and sorted(web["allowed_models"]) == ["gemma", "llama"]
    assert opsctl("apply", "-f", str(config)).stdout == "no changes\n"

    # A field the admin API cannot change in place is refused with its line, before any write.
    write(config, changed.replace("name: batch, tpm_limit: 1000", "name: batch, tpm_limit: 1000, "
                                  "require_signature: true").replace("rpm_limit: 600}", "}"))
    result = opsctl("apply", "-f", str(config), code=2)
    assert f"{config}:11: keys[1].require_signature: false → true: a key's require_signature" in result.stderr
    assert result.stderr.endswith("error: 1 problem(s) in the config; nothing was changed\n")
    assert api.get("/admin/v1/organizations/acme").json()["rpm_limit"] == 600  # nothing was changed

    # A limit left out of the file is removed (PATCH with null).
    write(config, changed.replace("rpm_limit: 600}", "}"))
    assert "~ org acme: rpm_limit 600 → none" in opsctl("apply", "-f", str(config)).stdout
    assert api.get("/admin/v1/organizations/acme").json()["rpm_limit"] is None
    assert opsctl("apply", "-f", str(config)).stdout == "no changes\n"


def test_prune_removes_only_what_the_config_owns(api, tmp_path):
    config = write(tmp_path / "fleet.yaml", BASE)
    secrets = str(tmp_path / "secrets.jsonl")
    opsctl("apply", "-f", str(config), "--secrets-out", secrets)
    # Made by hand: an org, a key in the config's org, an endpoint on the config's model.
    api.post("/admin/v1/organizations", json={"name": "handmade"}).raise_for_status()
    api.post("/admin/v1/api-keys", json={"org": "acme", "name": "manual"}).raise_for_status()
    api.post("/admin/v1/models", json={"name": "llama", "endpoint": "http://127.0.0.1:11"}).raise_for_status()

    smaller = (BASE.replace("  - {org: acme, name: batch, tpm_limit: 1000}\n", "")
               .replace('      - {url: "http://127.0.0.1:10", release: canary, weight: 10}\n', "")
               .replace("  - {org: acme, key: web, usd: 5, period: daily}\n", ""))
    write(config, smaller)
    kept = opsctl("apply", "-f", str(config)).stdout
    assert "  keep key acme/batch: owned but no longer declared (apply --prune removes it)" in kept
    assert kept.splitlines()[-1] == "no changes"

    pruned = opsctl("apply", "-f", str(config), "--prune").stdout.splitlines()
    assert pruned == ["- endpoint production/llama http://127.0.0.1:10", "- budget acme/web", "- key acme/batch",
                      "applied: 0 added, 0 changed, 3 removed"]
    keys = {k["name"]: k["status"] for k in api.get("/admin/v1/api-keys").json()}
    assert keys == {"web": "active", "batch": "revoked", "manual": "active"}
    urls = [e["url"] for e in api.get("/admin/v1/models/production/llama").json()["endpoints"]]
    assert sorted(urls) == ["http://127.0.0.1:11", "http://127.0.0.1:9"]

    # Ownership is by id: a new hand-made key under a pruned name is not the config's.
    api.post("/admin/v1/api-keys", json={"org": "acme", "name": "batch"}).raise_for_status()
    assert opsctl("apply", "-f", str(config), "--prune").stdout == "no changes\n"

    # Pruning everything: the model keeps its hand-made endpoint, the org its hand-made keys; both reported.
    write(config, "apiVersion: fleetgate/v1\nowner: platform\n")
    result = opsctl("apply", "-f", str(config), "--prune", code=1)
    assert "  cannot remove model production/llama: it has 1 endpoint(s) this config does not own" in result.stdout
    assert "- user alice" in result.stdout and "- org acme" in result.stdout
    assert "error: org acme was not removed: organization 'acme' still has 2 active API key(s)" in result.stderr
    users = {u["name"]: u["status"] for u in api.get("/admin/v1/users").json()}
    assert users == {"alice": "disabled"}
    orgs = sorted(o["name"] for o in api.get("/admin/v1/organizations").json())
    assert orgs == ["acme", "handmade"]
    owned = {(o["kind"], o["name"]) for o in api.get("/admin/v1/config/ownership").json()}
    assert owned == {("org", "acme"), ("model", "production/llama")}  # still to be removed once possible


def test_another_configs_objects_are_refused(api, tmp_path):
    write(tmp_path / "a.yaml", "apiVersion: fleetgate/v1\nowner: team-a\norgs:\n  - name: shared\n")
    opsctl("apply", "-f", str(tmp_path / "a.yaml"))
    config = write(tmp_path / "b.yaml", "apiVersion: fleetgate/v1\nowner: team-b\norgs:\n  - name: shared\n"
                                        "    rpm_limit: 5\n  - name: mine\n")
    result = opsctl("apply", "-f", str(config), code=2)
    assert f"{config}:4: orgs[0]: org 'shared' is owned by the config 'team-a': one object, one owner" in result.stderr
    assert [o["name"] for o in api.get("/admin/v1/organizations").json()] == ["shared"]


def test_a_bad_file_changes_nothing(api, tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    write(conf / "1-orgs.yaml", "apiVersion: fleetgate/v1\norgs:\n  - name: acme\n")
    write(conf / "2-keys.yaml", "apiVersion: fleetgate/v1\nkeys:\n  - org: acme\n    name: web\n    rpm_limit: 0\n")
    result = opsctl("apply", "-f", str(conf), code=2)
    assert result.stderr.splitlines() == [
        f"{conf}/2-keys.yaml:5: keys[0].rpm_limit: must be a positive integer (at most 2147483647), got 0",
        "error: 1 problem(s) in the config; nothing was changed"]

    # Problems only the gateway's state shows (dangling references) stop the apply before any write, too.
    write(conf / "2-keys.yaml", "apiVersion: fleetgate/v1\nkeys:\n  - {org: elsewhere, name: web}\n"
                                "budgets:\n  - {org: acme, key: nokey, usd: 1}\n"
                                "models:\n  - {name: m, fallbacks: [nothing]}\n")
    lines = opsctl("apply", "-f", str(conf), code=2).stderr.splitlines()
    assert lines == [
        f"{conf}/2-keys.yaml:3: keys[0].org: org 'elsewhere' is neither in this config nor on the gateway",
        f"{conf}/2-keys.yaml:5: budgets[0].key: key 'acme/nokey' is neither in this config nor on the gateway",
        f"{conf}/2-keys.yaml:7: models[0].fallbacks: model 'production/nothing' is neither in this config nor on "
        "the gateway",
        "error: 3 problem(s) in the config; nothing was changed"]
    assert api.get("/admin/v1/organizations").json() == []
    assert api.get("/admin/v1/models").json() == []

    assert "no such file or directory" in opsctl("apply", "-f", str(tmp_path / "nope.yaml"), code=2).stderr
    assert "Missing option '--filename'" in opsctl("apply", code=2).stderr


def test_secrets_go_to_a_private_file_or_a_terminal_never_to_a_log(gw, api, tmp_path):
    config = write(tmp_path / "fleet.yaml", "apiVersion: fleetgate/v1\norgs:\n  - name: acme\n"
                                            "keys:\n  - {org: acme, name: web}\n"
                                            "service_accounts:\n  - {name: ci, role: viewer}\n")
    refused = opsctl("apply", "-f", str(config), code=2).stderr
    assert ("creates 2 secret(s) (service-account ci, key acme/web) and stdout is not a terminal: pass "
            "--secrets-out FILE") in refused
    assert api.get("/admin/v1/organizations").json() == []
    opsctl("apply", "-f", str(config), "--secrets-out", str(tmp_path / "no-dir" / "s.jsonl"), code=2)
    assert api.get("/admin/v1/organizations").json() == []

    out = tmp_path / "secrets.jsonl"
    out.write_text("")
    out.chmod(0o644)  # an existing file is tightened before a secret lands in it
    applied = opsctl("apply", "-f", str(config), "--secrets-out", str(out)).stdout
    assert "sk-fg-" not in applied and "client_secret" not in applied
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    records = {r["kind"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert records["key"]["name"] == "acme/web" and records["key"]["key"].startswith("sk-fg-")
    models = httpx.get(f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {records['key']['key']}"})
    assert models.status_code == 200
    token = httpx.post(f"{gw.url}/oauth2/token", data={
        "grant_type": "client_credentials", "client_id": records["service_account"]["client_id"],
        "client_secret": records["service_account"]["client_secret"]})
    assert token.status_code == 200, token.text

    # At a terminal, the secret is shown once on it.
    write(config, config.read_text().replace("name: web}", "name: web}\n  - {org: acme, name: tty}"))
    primary, secondary = pty.openpty()
    env = {**os.environ, "FLEETGATE_GATEWAY_URL": gw.url, "FLEETGATE_ADMIN_TOKEN": E2E_TOKEN}
    proc = subprocess.run([sys.executable, "-m", "opsctl", "apply", "-f", str(config)], stdout=secondary,
                          stderr=subprocess.PIPE, env=env, timeout=60, check=False)
    os.close(secondary)
    shown = os.read(primary, 65536).decode()
    os.close(primary)
    assert proc.returncode == 0, proc.stderr
    assert "secrets (shown once, store them now):" in shown and "key acme/tty: sk-fg-" in shown


def test_export_applies_back_with_no_changes(api, tmp_path):
    api.post("/admin/v1/organizations", json={"name": "acme", "tpm_limit": 9000}).raise_for_status()
    key = api.post("/admin/v1/api-keys", json={"org": "acme", "name": "web", "models": ["b", "a"],
                                                "environment": "staging", "expires_in": "30d"}).json()
    old = api.post("/admin/v1/api-keys", json={"org": "acme", "name": "old"}).json()
    api.post(f"/admin/v1/api-keys/{old['id']}/revoke").raise_for_status()
    api.put("/admin/v1/budgets", json={"org": "acme", "usd": 0.1, "period": "total", "key_id": key["id"]})
    api.post("/admin/v1/users", json={"name": "bob", "role": "viewer"}).raise_for_status()
    api.patch("/admin/v1/users/bob", json={"status": "disabled"}).raise_for_status()
    api.post("/admin/v1/models", json={"name": "org/model:7b", "environment": "staging", "max_tokens": 64,
                                       "endpoint": "http://127.0.0.1:9", "weight": 3}).raise_for_status()

    exported = opsctl("export").stdout
    assert "sk-fg-" not in exported and "old" not in exported  # no secrets, no revoked keys
    assert "- name: bob\n  role: viewer\n  disabled: true\n" in exported
    path = write(tmp_path / "fleet.yaml", exported)
    applied = opsctl("apply", "-f", str(path)).stdout.splitlines()
    assert applied[-1] == "no changes" and "  adopt key acme/web (exists; now owned by 'default')" in applied
    assert opsctl("apply", "-f", str(path)).stdout == "no changes\n"

    opsctl("export", "--owner", "default", "--out", str(tmp_path / "owned.yaml"))
    assert (tmp_path / "owned.yaml").read_text() == exported
    assert opsctl("apply", "-f", str(tmp_path / "owned.yaml")).stdout == "no changes\n"
    as_json = write(tmp_path / "fleet.json", opsctl("export", "-o", "json").stdout)
    assert json.loads(as_json.read_text())["users"] == [{"name": "bob", "role": "viewer", "disabled": True}]
    assert opsctl("apply", "-f", str(as_json)).stdout == "no changes\n"
    assert "apiVersion: fleetgate/v1\nowner: nobody\n" in opsctl("export", "--owner", "nobody").stdout
    assert "--owner 'a b' must be" in opsctl("export", "--owner", "a b", code=2).stderr
