"""`opsctl audit list|export` against a real gateway process: filters, paging, streamed exports, bad input."""

from __future__ import annotations

import csv
import io
import json
import stat

import httpx
import pytest

from tests.e2e.conftest import cli, module_gateway
from tests.support import free_port

TOKEN = "fg-admin-cli-audit"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    with module_gateway(tmp_path_factory.mktemp("cli-audit") / "state", TOKEN, FLEETGATE_ACCESS_LOG="false") as gw:
        with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {TOKEN}"}) as admin:
            for org in ("acme", "beta"):
                assert admin.post("/admin/v1/organizations", json={"name": org}).status_code == 201
                assert admin.post("/admin/v1/api-keys", json={"org": org}).status_code == 201
            assert admin.patch("/admin/v1/organizations/acme", json={"rpm_limit": 60},
                               headers={"X-Fleetgate-Change-Source": "git:repo#main@abcd"}).status_code == 200
        yield gw.url


@pytest.fixture
def opsctl(gateway, monkeypatch):
    return cli(gateway, TOKEN, monkeypatch)


def test_list_filters_and_pages(opsctl):
    entries = json.loads(opsctl("audit", "list", "-o", "json").stdout)
    assert [e["action"] for e in entries] == ["org.update", "key.create", "org.create", "key.create", "org.create"]
    assert entries[0]["source"] == "git:repo#main@abcd" and entries[0]["detail"] == {"rpm_limit": 60}
    keys = json.loads(opsctl("audit", "list", "--action", "key.*", "--org", "beta", "-o", "json").stdout)
    assert [(e["action"], e["org_id"]) for e in keys] == [("key.create", entries[1]["org_id"])]
    assert json.loads(opsctl("audit", "list", "--actor", "user:nobody", "-o", "json").stdout) == []
    assert len(json.loads(opsctl("audit", "list", "--since", "1h", "--until", "2999-01-01", "-o", "json").stdout)) == 5

    page = opsctl("audit", "list", "--limit", "2")
    assert page.stdout.splitlines()[0].split()[:5] == ["ID", "TS", "ACTOR", "ACTION", "TARGET"]
    assert "org.update" in page.stdout and f"more: --before-id {entries[1]['id']}" in page.stderr
    rest = json.loads(opsctl("audit", "list", "--before-id", str(entries[1]["id"]), "-o", "json").stdout)
    assert rest == entries[2:]


def test_export_jsonl_to_stdout_and_csv_to_a_file(opsctl, tmp_path):
    listed = list(reversed(json.loads(opsctl("audit", "list", "-o", "json").stdout)))
    out = opsctl("audit", "export").stdout
    assert [json.loads(line) for line in out.splitlines()] == listed
    target = tmp_path / "audit.csv"
    result = opsctl("audit", "export", "--format", "csv", "--out", str(target), "--org", "acme")
    assert result.stdout == "" and str(target) in result.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [r["action"] for r in rows] == ["org.create", "key.create", "org.update"]
    assert json.loads(rows[-1]["after"])["rpm_limit"] == 60 and rows[-1]["before"]
    assert [p.name for p in tmp_path.iterdir()] == ["audit.csv"]  # no partial file left beside it
    summary = opsctl("audit", "export", "--out", str(tmp_path / "all.jsonl"), "-o", "json").stdout
    assert json.loads(summary) == {"out": str(tmp_path / "all.jsonl"), "format": "jsonl", "entries": len(listed)}


def test_bad_input_is_one_line_and_exit_2(opsctl, tmp_path):
    for args, needle in [
        (("audit", "list", "--since", "yesterday"), "--since 'yesterday' is invalid"),
        (("audit", "list", "--limit", "0"), "'limit' must be an integer between 1 and 1000"),
        (("audit", "list", "--action", "key.**"), "'action' must be an action"),
        (("audit", "list", "--org", "no-such-org"), "not found"),
        (("audit", "export", "--until", "later"), "--until 'later' is invalid"),
        (("audit", "export", "--format", "xml"), "xml"),
        (("audit", "export", "--out", str(tmp_path / "missing-dir" / "a.jsonl")), "cannot write"),
    ]:
        result = opsctl(*args, code=2)
        assert needle in result.output, (args, result.output)
        assert result.output.startswith("error:") and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "missing-dir").exists()


def test_unreachable_gateway_is_exit_1(opsctl, monkeypatch, tmp_path):
    monkeypatch.setenv("FLEETGATE_GATEWAY_URL", f"http://127.0.0.1:{free_port()}")
    assert "cannot reach the gateway" in opsctl("audit", "list", code=1).output
    assert "cannot reach the gateway" in opsctl("audit", "export", "--out", str(tmp_path / "a.jsonl"), code=1).output
    assert list(tmp_path.iterdir()) == []
