"""`opsctl usage export`: the file under --out is complete or absent, sums to the lake, and bad input is exit 2.

The lake is real (Parquet written by the lake writer, local or on moto's S3 server); a failure halfway through
writing is real too: the CLI runs in a process whose file-size limit (`ulimit -f`) the export exceeds.
"""

from __future__ import annotations

import csv
import json
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from analytics_lake.location import LakeConfig
from analytics_lake.synthetic import make_event
from analytics_lake.writer import write_batch
from opsctl.commands.lake import usage_app
from tests.support import free_port, repo_root

HOUR_US = 3_600_000_000
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
ACME, GLOBEX = "org_00000000000000ac", "org_0000000000000b0b"


def _events(n: int, *, seed: int = 5, keys: int = 7) -> list[dict]:
    """`n` events of two orgs over the first two days of January (in four hours: few files to write)."""
    rng = random.Random(seed)
    return [make_event(T0 + (i % 4) * 12 * HOUR_US + i, org=(ACME, GLOBEX)[i % 2], key=f"key-{i % keys}",
                       model=("m1", "m2")[i % 2], rng=rng) for i in range(n)]


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> tuple[str, list[dict]]:
    """One local lake for the module (the exports only read it): its URL and its events."""
    url = f"file://{tmp_path_factory.mktemp('lake')}/lake"
    events = _events(60)
    write_batch(LakeConfig(url), events, writer_id="w")
    return url, events


@pytest.fixture
def env(tmp_path, monkeypatch, lake) -> dict[str, str]:
    """The lake and a state dir; the gateway URL is a closed port (org ids need no gateway)."""
    values = {"FLEETGATE_STATE_DIR": str(tmp_path / "state"), "FLEETGATE_LAKE_URL": lake[0],
              "FLEETGATE_GATEWAY_URL": f"http://127.0.0.1:{free_port()}"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def events(env, lake) -> list[dict]:
    return lake[1]


@pytest.fixture
def out_dir(tmp_path) -> Path:
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


def _cli() -> typer.Typer:
    """`opsctl usage` as the root app mounts it (the subprocess tests run the real `python -m opsctl`)."""
    root = typer.Typer()
    root.add_typer(usage_app, name="usage")
    return root


CLI = _cli()


def opsctl(*args: str, code: int = 0):
    result = CliRunner().invoke(CLI, ["usage", "export", *args])
    assert result.exit_code == code, f"{args} → {result.exit_code}\n{result.output}"
    return result


def micros(events: list[dict], org: str | None = None) -> int:
    return sum(e["cost_micros"] for e in events if org in (None, e["org_id"]))


@pytest.mark.parametrize("name, fmt, org", [
    ("jan.csv", "csv", None), ("jan.parquet", "parquet", ACME), ("jan.db", "sqlite", GLOBEX),
    ("jan.sqlite", "sqlite", None), ("jan.txt", "csv", ACME),
])
def test_the_format_follows_the_suffix_and_totals_equal_the_lake(events, out_dir, name, fmt, org):
    out = out_dir / name
    args = ["--month", "2026-01", "--out", str(out), "-o", "json"] + (["--org", org] if org else [])
    summary = json.loads(opsctl(*args).stdout)
    assert (summary["format"], summary["schema"], summary["org"]) == (fmt, "fleetgate", org)
    assert summary["cost_micros"] == micros(events, org)
    assert summary["requests"] == len([e for e in events if org in (None, e["org_id"])])
    assert (summary["since"], summary["until"]) == ("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z")
    assert summary["bytes"] == out.stat().st_size
    assert sorted(p.name for p in out_dir.iterdir()) == [name]  # no temporary file left beside it
    if fmt == "csv":
        with out.open(newline="") as f:
            rows = list(csv.DictReader(f))
    elif fmt == "parquet":
        rows = pq.read_table(out).to_pylist()
    else:
        con = sqlite3.connect(out)
        con.row_factory = sqlite3.Row
        rows = [dict(r) for r in con.execute("SELECT * FROM usage_daily")]
        con.close()
    assert sum(int(r["cost_micros"]) for r in rows) == summary["cost_micros"]
    assert {r["org_id"] for r in rows} == ({org} if org else {ACME, GLOBEX})


def test_a_range_in_focus_columns_and_the_one_line_summary(events, out_dir):
    out = out_dir / "export.bin"
    result = opsctl("--since", "2026-01-02", "--until", "2026-01-02", "--format", "parquet", "--schema", "focus",
                    "--out", str(out))
    day_two = [e for e in events if T0 + 24 * HOUR_US <= e["ts"] < T0 + 48 * HOUR_US]
    assert day_two
    table = pq.read_table(out)
    assert sum(table.column("x_CostMicros").to_pylist()) == micros(day_two)
    assert {str(t.date()) for t in table.column("ChargePeriodStart").to_pylist()} == {"2026-01-02"}
    usd = f"{micros(day_two) // 10**6}.{micros(day_two) % 10**6:06d}"
    assert result.stdout == f"wrote {table.num_rows} rows ({len(day_two)} requests, {usd} USD) to {out}\n"


def test_an_existing_file_is_kept_unless_force(events, out_dir):
    out = out_dir / "jan.csv"
    out.write_text("finance's own notes\n")
    out.chmod(0o640)
    result = opsctl("--month", "2026-01", "--out", str(out), code=2)
    assert result.stderr == f"error: --out {out} already exists: pass --force to replace it\n"
    assert out.read_text() == "finance's own notes\n"
    opsctl("--month", "2026-01", "--out", str(out), "--force")
    assert out.read_text().startswith('"period_start","period_end","day","org_id"')
    assert oct(out.stat().st_mode & 0o777) == oct(0o640)  # the replaced file's mode is kept
    assert sorted(p.name for p in out_dir.iterdir()) == ["jan.csv"]


def test_an_empty_month_is_a_header_only_file(events, out_dir):
    out = out_dir / "june.csv"
    summary = json.loads(opsctl("--month", "2025-06", "--out", str(out), "-o", "json").stdout)
    assert (summary["rows"], summary["requests"], summary["cost_usd"]) == (0, 0, "0.000000")
    with out.open(newline="") as f:
        assert [len(row) for row in csv.reader(f)] == [15]  # the header only


@pytest.mark.parametrize("args, fragment", [
    (["--month", "2026-13"], "month '2026-13' is invalid"),
    (["--month", "January"], "month 'January' is invalid"),
    ([], "--month YYYY-MM, or --since"),
    (["--month", "2026-01", "--since", "2026-01-01"], "either --month or --since"),
    (["--month", "2026-01", "--until", "2026-01-05"], "--until goes with --since"),
    (["--since", "2026-01-10", "--until", "2026-01-05"], "must be after since"),
    (["--since", "last tuesday"], "--since 'last tuesday' is invalid"),
    (["--since", "2024-01-01", "--until", "2026-01-01"], "at most 366 days"),
    (["--month", "2026-01", "--format", "xlsx"], "format 'xlsx' is invalid"),
    (["--month", "2026-01", "--schema", "cur"], "schema 'cur' is invalid"),
    (["--month", "2026-01", "--org", ""], "org is invalid"),
])
def test_bad_input_is_exit_2_with_one_line(env, out_dir, args, fragment):
    result = opsctl(*args, "--out", str(out_dir / "x.csv"), code=2)
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: ")
    assert fragment in result.stderr, result.stderr
    assert list(out_dir.iterdir()) == []


def test_out_must_be_a_file_name(events, out_dir):
    result = opsctl("--month", "2026-01", code=2)
    assert "Missing option '--out'" in result.output
    result = opsctl("--month", "2026-01", "--out", str(out_dir), code=2)
    assert result.stderr == (f"error: --out {out_dir} is a directory: give a file name, e.g. "
                             f"{out_dir / 'usage-all-2026-01.csv'}\n")


def test_an_unwritable_place_is_exit_1_and_leaves_nothing(events, out_dir):
    blocker = out_dir / "plain-file"
    blocker.write_text("")
    for out in (out_dir / "missing" / "x.csv", blocker / "x.csv"):
        result = opsctl("--month", "2026-01", "--out", str(out), code=1)
        assert result.stderr.startswith(f"error: cannot write {out}: ") and len(result.stderr.splitlines()) == 1
    assert sorted(p.name for p in out_dir.iterdir()) == ["plain-file"]


@pytest.mark.parametrize("suffix, reason", [(".csv", "File too large"), (".sqlite", "SQLite")])
def test_a_failure_halfway_leaves_neither_the_file_nor_a_temporary_one(tmp_path, monkeypatch, env, out_dir, suffix,
                                                                        reason):
    big = f"file://{tmp_path}/big-lake"
    write_batch(LakeConfig(big), _events(1000, seed=9, keys=1000), writer_id="w")
    monkeypatch.setenv("FLEETGATE_LAKE_URL", big)
    out = out_dir / f"jan{suffix}"
    command = (f"ulimit -f 64 && exec {sys.executable} -m opsctl usage export --month 2026-01 --schema focus "
               f"--out {out}")  # at most 64 KiB per file
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, cwd=repo_root(),
                          env=dict(os.environ))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"error: cannot write {out}: ") and len(proc.stderr.splitlines()) == 1
    assert reason in proc.stderr
    assert list(out_dir.iterdir()) == []
    # Without the limit the same export succeeds, and is far larger: the failure was halfway, not at the start.
    opsctl("--month", "2026-01", "--schema", "focus", "--out", str(out))
    assert out.stat().st_size > 256 * 1024


@pytest.mark.s3
def test_export_from_an_s3_lake(tmp_path, monkeypatch, s3_server, s3_bucket, out_dir):
    config = LakeConfig(f"s3://{s3_bucket}/lake", s3_endpoint=s3_server.endpoint, s3_access_key="test",
                        s3_secret_key="test")
    events = _events(40)
    write_batch(config, events, writer_id="w")
    for name, value in {"FLEETGATE_STATE_DIR": str(tmp_path / "state"), "FLEETGATE_LAKE_URL": config.url,
                        "FLEETGATE_S3_ENDPOINT": s3_server.endpoint, "FLEETGATE_S3_ACCESS_KEY": "test",
                        "FLEETGATE_S3_SECRET_KEY": "test"}.items():
        monkeypatch.setenv(name, value)
    out = out_dir / "jan.parquet"
    summary = json.loads(opsctl("--month", "2026-01", "--org", ACME, "--out", str(out), "-o", "json").stdout)
    assert summary["cost_micros"] == micros(events, ACME) == sum(pq.read_table(out).column("cost_micros").to_pylist())
