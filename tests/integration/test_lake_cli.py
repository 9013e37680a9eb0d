"""The lake CLI: good paths print results, bad input exits 2 with one line on stderr."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from analytics_lake.location import LakeConfig
from analytics_lake.spool_files import acquire_lock, release_lock, segment_name
from analytics_lake.synthetic import make_event
from analytics_lake.writer import write_batch
from opsctl.commands.lake import lake_app, sql_command, usage_app

T0 = 1_767_225_600_000_000
ACME, GLOBEX = "org_00000000000000ac", "org_0000000000000b0b"  # the lake stores org ids


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETGATE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("FLEETGATE_LAKE_URL", f"file://{tmp_path}/lake")
    app = typer.Typer()
    app.add_typer(lake_app, name="lake")
    app.add_typer(usage_app, name="usage")
    app.command("sql")(sql_command)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


@pytest.fixture
def lake(tmp_path):
    config = LakeConfig(f"file://{tmp_path}/lake")
    write_batch(config, [make_event(T0 + i, org=(ACME, GLOBEX)[i % 2]) for i in range(10)], writer_id="w")
    return config


@pytest.mark.parametrize("args", [
    ["usage", "report", "spend", "--by", "planet"],
    ["usage", "report", "latency", "--since", "yesterday-ish"],
    ["usage", "report", "bogus"],
    ["usage", "report", "spend", "--until", "soonish"],
    ["usage", "report", "spend", "--since", "2026-01-10", "--until", "2026-01-05"],
    ["usage", "export", "--month", "2026-13", "--out", "x.csv"],
    ["lake", "compact", "--before", "31/01/2026"],
    ["sql", "DROP VIEW usage"],
    ["sql", "SELECT * FROM read_csv('/etc/passwd')"],
    ["sql", "SELECT 1; SELECT 2"],
    ["sql", "SELECT nope FROM usage"],
    ["sql", "SELECT 1", "--format", "xml"],
    ["lake", "writer"],  # no Redis configured
])
def test_bad_input_exits_2(cli, lake, args):
    result = cli(*args)
    assert result.exit_code == 2, result.output


def test_sql_and_reports(cli, lake, tmp_path):
    result = cli("sql", "SELECT org_id, count(*) AS n FROM usage GROUP BY 1 ORDER BY 1", "--format", "csv")
    assert result.exit_code == 0 and result.output.splitlines() == ['"org_id","n"', f'"{ACME}",5', f'"{GLOBEX}",5']
    result = cli("usage", "report", "spend", "--by", "org", "--org", ACME, "--output", "json")
    assert result.exit_code == 0 and ACME in result.output and GLOBEX not in result.output
    result = cli("usage", "report", "spend", "--by", "org", "--until", "2000-01-01", "--output", "json")
    assert result.exit_code == 0 and json.loads(result.output) == []  # every row is later than the range
    out = tmp_path / "jan.csv"
    result = cli("usage", "export", "--month", "2026-01", "--out", str(out))
    assert result.exit_code == 0 and out.read_text().startswith('"period_start","period_end","day","org_id"')
    assert cli("lake", "verify").exit_code == 0
    assert cli("lake", "compact").exit_code == 0


def test_lake_flush_writes_dead_spools_and_skips_live_ones(cli, tmp_path):
    import orjson

    dead = tmp_path / "state" / "spool" / "gw-dead"
    dead.mkdir(parents=True)
    events = [make_event(T0 + i) for i in range(7)]
    (dead / segment_name(1)).write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    live = tmp_path / "state" / "spool" / "gw-live"
    fd = acquire_lock(live)
    try:
        result = cli("lake", "flush", "--output", "json")
    finally:
        release_lock(fd)
    assert result.exit_code == 0, result.output
    assert '"rows": 7' in result.output and '"gw-live"' in result.output
    assert cli("sql", "SELECT count(*) AS n FROM usage", "--format", "csv").output.splitlines()[1] == "7"
