"""`--org` takes an org's name or its id on every command that has it.

The lake stores org ids, so lake commands resolve a name through the admin API of a real
gateway; an unknown org is exit 2 with one line, never an empty report with exit 0.
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from analytics_lake.location import LakeConfig
from analytics_lake.synthetic import make_event
from analytics_lake.writer import write_batch
from opsctl.cli import app
from tests.e2e.conftest import E2E_TOKEN
from tests.support import free_port

OTHER_ORG = "org_00000000000000ff"


@pytest.fixture
def cli(gateway_factory, tmp_path, monkeypatch):
    gw = gateway_factory()
    monkeypatch.setenv("FLEETGATE_GATEWAY_URL", gw.url)
    monkeypatch.setenv("FLEETGATE_ADMIN_TOKEN", E2E_TOKEN)
    monkeypatch.setenv("FLEETGATE_STATE_DIR", str(tmp_path / "cli-state"))
    monkeypatch.setenv("FLEETGATE_LAKE_URL", f"file://{tmp_path}/lake")
    runner = CliRunner()

    def run(*args: str, code: int = 0):
        result = runner.invoke(app, list(args))
        assert result.exit_code == code, f"{args} → {result.exit_code}\n{result.output}"
        return result

    return run


@pytest.fixture
def acme(cli, tmp_path) -> str:
    """Org 'acme' in the store, with 3 requests of 9 micro-USD each in the lake (plus another org's 2)."""
    org_id = json.loads(cli("org", "create", "acme", "-o", "json").stdout)["id"]
    now = int(datetime.now(UTC).timestamp() * 1_000_000)
    events = [{**make_event(now + i, org=org_id), "cost_micros": 9} for i in range(3)]
    events += [make_event(now + 10 + i, org=OTHER_ORG) for i in range(2)]
    write_batch(LakeConfig(f"file://{tmp_path}/lake"), events, writer_id="test")
    return org_id


def test_every_org_option_takes_names_and_ids(cli, acme, tmp_path):
    for org in ("acme", acme):
        rows = json.loads(cli("usage", "report", "spend", "--org", org, "-o", "json").stdout)
        assert [(r["org_id"], r["requests"]) for r in rows] == [(acme, 3)]
        counted = cli("sql", "select count(*) as n from usage", "--org", org, "-f", "json").stdout
        assert json.loads(counted) == [{"n": 3}]
    table = cli("usage", "report", "spend", "--org", "acme").stdout
    assert "0.000027" in table and "e-" not in table  # a dollar amount as people write it
    out = tmp_path / "month.csv"
    month = datetime.now(UTC).strftime("%Y-%m")
    cli("usage", "export", "--month", month, "--out", str(out), "--org", "acme")
    with out.open() as f:
        assert {row["org_id"] for row in csv.DictReader(f)} == {acme}
    # Admin commands: the admin API resolves names itself.
    by_name = json.loads(cli("key", "create", "--org", "acme", "--name", "a", "-o", "json").stdout)
    by_id = json.loads(cli("key", "create", "--org", acme, "--name", "b", "-o", "json").stdout)
    assert by_name["org_id"] == by_id["org_id"] == acme
    for org in ("acme", acme):
        listed = json.loads(cli("key", "list", "--org", org, "-o", "json").stdout)
        assert {k["name"] for k in listed} == {"a", "b"}
    assert json.loads(cli("budget", "set", acme, "6", "-o", "json").stdout)["org_id"] == acme
    assert json.loads(cli("budget", "set", "acme", "5", "-o", "json").stdout)["org_id"] == acme
    assert json.loads(cli("budget", "show", acme, "-o", "json").stdout)[0]["limit_usd"] == 5
    for org in ("acme", acme):
        rebuilt = json.loads(cli("budget", "rebuild", "--org", org, "-o", "json").stdout)
        assert [r["org_id"] for r in rebuilt] == [acme]
    for args in (["key", "list", "--org", "nope"], ["key", "create", "--org", "nope"],
                 ["budget", "rebuild", "--org", "nope"], ["budget", "show", "nope"], ["budget", "set", "nope", "1"]):
        result = cli(*args, code=2)
        assert "nope" in result.stderr and len(result.stderr.splitlines()) == 1, args


@pytest.mark.parametrize("args", [
    ["usage", "report", "spend", "--org", "nope"],
    ["usage", "export", "--month", "2026-01", "--out", "x.csv", "--org", "nope"],
    ["sql", "select 1", "--org", "nope"],
])
def test_unknown_org_name_is_exit_2_on_lake_commands(cli, acme, args):
    result = cli(*args, code=2)
    assert result.stderr.strip() == ("error: unknown org 'nope': no organization has this name or id "
                                     "(see 'opsctl org list')")


def test_ids_work_without_a_gateway_names_say_what_to_do(cli, acme, monkeypatch):
    monkeypatch.setenv("FLEETGATE_GATEWAY_URL", f"http://127.0.0.1:{free_port()}")
    rows = json.loads(cli("usage", "report", "spend", "--org", acme, "-o", "json").stdout)
    assert [r["org_id"] for r in rows] == [acme]
    result = cli("usage", "report", "spend", "--org", "acme", code=1)
    assert result.stderr.startswith("error: cannot look up the org named 'acme': cannot reach the gateway")
    assert "pass its id (org_…) instead" in result.stderr
