"""`opsctl lake rollup` as a process: builds, reports status, rebuilds idempotently, refuses bad input with exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from analytics_lake.location import LakeConfig
from analytics_lake.synthetic import make_event
from analytics_lake.writer import write_batch

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs
HOUR_US = 3_600_000_000


def opsctl(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    env.update(FLEETGATE_STATE_DIR=str(tmp_path / "state"), FLEETGATE_LAKE_URL=f"file://{tmp_path}/lake")
    return subprocess.run([sys.executable, "-m", "opsctl", "lake", "rollup", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)


def test_rollup_status_and_rebuild(tmp_path):
    config = LakeConfig(f"file://{tmp_path}/lake")
    write_batch(config, [make_event(T0 + h * HOUR_US + i, org=f"o{i % 2}") for h in range(3) for i in range(20)])
    before = json.loads(opsctl(tmp_path, "--status", "-o", "json").stdout)
    assert (before["closed_hours"], before["rolled_up"], len(before["stale"])) == (3, 0, 3)
    built = opsctl(tmp_path, "-o", "json")
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["hours_built"] == 3
    again = json.loads(opsctl(tmp_path, "-o", "json").stdout)
    assert again["hours_built"] == 0  # nothing stale: a no-op
    rebuilt = json.loads(opsctl(tmp_path, "--rebuild", "-o", "json").stdout)
    assert rebuilt["hours_built"] == 3 and rebuilt["days_packed"] == 1
    after = json.loads(opsctl(tmp_path, "--status", "-o", "json").stdout)
    assert (after["rolled_up"], after["stale"], after["lag_s"]) == (3, [], 0.0)


def test_bad_input_exits_2_with_one_line(tmp_path):
    for args in (("--rebuild", "--status"), ("--nope",)):
        done = opsctl(tmp_path, *args)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
    done = opsctl(tmp_path, "--rebuild", "--status")
    assert done.stderr.strip().count("\n") == 0 and "exclusive" in done.stderr
