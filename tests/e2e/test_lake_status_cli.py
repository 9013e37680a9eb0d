"""`opsctl lake status` as a process: known lakes on disk and on S3 (moto), the spool backlog, bad input exits 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from analytics_lake import rollup
from analytics_lake.compaction import compact
from analytics_lake.freshness import lake_freshness, record_compaction
from analytics_lake.location import LakeConfig
from analytics_lake.spool_files import segment_name
from analytics_lake.synthetic import make_event
from analytics_lake.writer import write_batch
from tests.support import free_port

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs
HOUR_US = 3_600_000_000
SECRET = "s3-secret-never-printed"


def opsctl(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    return subprocess.run([sys.executable, "-m", "opsctl", "lake", "status", *args], capture_output=True, text=True,
                          timeout=60, env={**base, **env}, cwd=cwd)


def status_json(env: dict[str, str], cwd: Path) -> dict:
    done = opsctl("--output", "json", env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def one_line_error(done: subprocess.CompletedProcess, code: int) -> str:
    assert done.returncode == code, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    return done.stderr


def fill(config: LakeConfig) -> dict:
    """Day 1 hours 00 (2 files, 12 rows; compacted, recorded and rolled up) and 02 (3 rows); day 2 hour 01 (1 row,
    the newest). Returns the compaction record."""
    write_batch(config, [make_event(T0 + i) for i in range(10)], writer_id="w", seq="1")
    write_batch(config, [make_event(T0 + 50 + i) for i in range(2)], writer_id="late", seq="2")
    report = compact(config)
    assert (report["hours_compacted"], report["files_merged"]) == (1, 2)
    record = record_compaction(config, report, now=datetime(2026, 1, 2, tzinfo=UTC))
    rollup.update(config)
    write_batch(config, [make_event(T0 + 2 * HOUR_US + i) for i in range(3)], writer_id="w", seq="3")
    write_batch(config, [make_event(T0 + 25 * HOUR_US + 123_456)], writer_id="w", seq="4")
    return record


EXPECTED_DAYS = [{"dt": "2026-01-01", "hours": 2, "files": 2, "rows": 15},
                 {"dt": "2026-01-02", "hours": 1, "files": 1, "rows": 1}]


def test_a_local_lake_with_a_spool_backlog(tmp_path):
    state = tmp_path / "state"
    record = fill(LakeConfig(f"file://{state}/lake"))  # the default lake of this state dir
    dead = state / "spool" / "gw-1"
    dead.mkdir(parents=True)
    segment = b"".join(orjson.dumps(make_event(T0 + i)) + b"\n" for i in range(3))
    (dead / segment_name(T0)).write_bytes(segment)

    status = status_json({"FLEETGATE_STATE_DIR": str(state)}, tmp_path)
    assert status["lake"] == f"file://{state}/lake" and not status["empty"]
    assert status["newest_event"] == "2026-01-02T01:00:00.123456+00:00"
    checked = datetime.fromisoformat(status["checked_at"])
    assert status["lag_s"] == pytest.approx((checked - datetime(2026, 1, 2, 1, 0, 0, 123456, tzinfo=UTC))
                                            .total_seconds(), abs=1e-6)
    assert status["days"] == EXPECTED_DAYS and (status["files"], status["rows"]) == (3, 16)
    assert status["last_compaction"] == record and record["finished_at"] == "2026-01-02T00:00:00.000000+00:00"
    assert status["pending_compactions"] == []
    # hours written after the rollup update are stale; the lag counts from the end of the oldest of them (03:00)
    assert status["rollup"]["stale"] == ["2026-01-01T02", "2026-01-02T01"] and status["rollup"]["rolled_up"] == 1
    assert status["rollup_lag_s"] == pytest.approx((checked - datetime(2026, 1, 1, 3, tzinfo=UTC)).total_seconds(),
                                                   abs=1e-6)
    [spool] = status["spool"]
    assert spool["oldest_segment_age_s"] == pytest.approx((checked - datetime(2026, 1, 1, tzinfo=UTC)).total_seconds(),
                                                         abs=1e-6)
    assert {k: v for k, v in spool.items() if k != "oldest_segment_age_s"} == {
        "writer": "gw-1", "live": False, "segments": 1, "bytes": len(segment), "rejected_files": 0}

    done = opsctl(env={"FLEETGATE_STATE_DIR": str(state)}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["FIELD", "VALUE"]
    assert "newest event         2026-01-02T01:00:00.123456+00:00" in lines
    assert "stale rollup hours   2026-01-01T02, 2026-01-02T01" in lines
    assert "spool backlog        1 segments, %d bytes in 1 writer dirs" % len(segment) in lines
    assert "days:" in lines and "spool:" in lines


def test_an_empty_or_missing_lake_says_empty(tmp_path):
    done = opsctl(env={"FLEETGATE_STATE_DIR": str(tmp_path / "never-used")}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "state                empty" in done.stdout.splitlines()
    assert "spool backlog        none" in done.stdout.splitlines()


@pytest.mark.parametrize(("args", "env", "message"), [
    ([], {"FLEETGATE_LAKE_URL": "ftp://lake/x"}, "lake_url"),
    ([], {"FLEETGATE_LAKE_URL": "file://relative/dir"}, "must be file:///ABSOLUTE/DIR"),
    (["--config", "missing.toml"], {}, "does not exist"),
    (["--output", "xml"], {}, "xml"),
])
def test_bad_input_exits_2(tmp_path, monkeypatch, args, env, message):
    from typer.testing import CliRunner

    from opsctl.cli import app

    for key, value in {"FLEETGATE_STATE_DIR": str(tmp_path / "s"), **env}.items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(app, ["lake", "status", *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_bad_config_is_one_line_on_stderr(tmp_path):
    (tmp_path / "fleetgate.toml").write_text("lake_url = 'ftp://nowhere'\n")
    line = one_line_error(opsctl(env={}, cwd=tmp_path), 2)
    assert "lake_url" in line


def s3_env(endpoint: str, bucket: str) -> dict[str, str]:
    return {"FLEETGATE_LAKE_URL": f"s3://{bucket}/lake", "FLEETGATE_S3_ENDPOINT": endpoint,
            "FLEETGATE_S3_ACCESS_KEY": "test", "FLEETGATE_S3_SECRET_KEY": SECRET}


@pytest.mark.s3
def test_an_s3_lake(tmp_path, s3_server, s3_bucket):
    config = LakeConfig(f"s3://{s3_bucket}/lake", s3_endpoint=s3_server.endpoint, s3_access_key="test",
                        s3_secret_key=SECRET)
    record = fill(config)
    assert lake_freshness(config)["newest_event"] == "2026-01-02T01:00:00.123456+00:00"
    env = {"FLEETGATE_STATE_DIR": str(tmp_path / "state"), **s3_env(s3_server.endpoint, s3_bucket)}
    status = status_json(env, tmp_path)
    assert status["newest_event"] == "2026-01-02T01:00:00.123456+00:00"
    assert status["days"] == EXPECTED_DAYS and status["last_compaction"] == record
    assert status["rollup"]["stale"] == ["2026-01-01T02", "2026-01-02T01"]
    assert status["spool"] == [] and status["problems"] == []
    assert SECRET not in json.dumps(status)


def test_an_unreachable_s3_lake_is_exit_1_without_secrets(tmp_path):
    env = {"FLEETGATE_STATE_DIR": str(tmp_path / "state"), **s3_env(f"http://127.0.0.1:{free_port()}", "gone")}
    line = one_line_error(opsctl(env=env, cwd=tmp_path), 1)
    assert line.startswith("error: listing the lake failed") and SECRET not in line
