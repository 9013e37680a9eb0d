"""Compaction: merges per hour, removes duplicates, survives being stopped midway; verify reports problems."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analytics_lake.catalog import MANIFEST, list_hours
from analytics_lake.compaction import begin_hour, compact, verify
from analytics_lake.errors import LakeError
from analytics_lake.location import LakeConfig, open_lake
from analytics_lake.query import LakeQuery
from analytics_lake.synthetic import make_event
from analytics_lake.writer import write_batch

T0 = 1_767_225_600_000_000
HOUR_US = 3_600_000_000


@pytest.fixture
def lake(tmp_path):
    """Two hours, three files each; 10 rows written twice (an at-least-once redelivery)."""
    config = LakeConfig(f"file://{tmp_path}/lake")
    events = [make_event(T0 + (i % 2) * HOUR_US + i) for i in range(120)]
    for n, chunk in enumerate((events[:40], events[40:80], events[80:])):
        write_batch(config, chunk, writer_id="w", seq=str(n))
    write_batch(config, events[:10], writer_id="dup", seq="9")
    return config, events


def _count(config: LakeConfig) -> tuple[int, int]:
    with LakeQuery(config) as q:
        row = q.sql("SELECT count(*), count(DISTINCT request_id) FROM usage").to_pylist()[0]
    return tuple(row.values())


def test_compaction_merges_each_hour_and_removes_duplicates(lake):
    config, events = lake
    before = verify(config)
    assert before["duplicate_request_ids"] == 10 and not before["ok"]
    report = compact(config)
    assert report == {"hours_compacted": 2, "hours_resumed": 0, "files_merged": 8, "rollup_hours_built": 2}
    after = verify(config)
    assert after["ok"] and after["files"] == 2 and after["rows"] == 120
    assert _count(config) == (120, 120)
    assert [len(p.files) for p in list_hours(open_lake(config))] == [1, 1]
    assert compact(config)["hours_compacted"] == 0  # idempotent


def test_compaction_stopped_after_writing_the_merge_is_finished_by_a_rerun(lake):
    config, _ = lake
    opened = open_lake(config)
    part = list_hours(opened)[0]
    manifest = begin_hour(opened, part)  # phase 1 only: as if killed right after the merged file landed
    hour = list_hours(opened)[0]
    assert manifest["output"] in hour.files and set(manifest["inputs"]) <= set(hour.files)
    # both the inputs and the merged file exist; readers must not double count
    rows, distinct = _count(config)
    assert distinct == 120 and rows == 125  # hour 0 deduped by its merge, hour 1 still holds 5 duplicates
    assert verify(config)["pending_compactions"] == ["dt=2026-01-01/hour=00"]
    report = compact(config)
    assert report["hours_resumed"] == 1 and report["hours_compacted"] == 1
    assert _count(config) == (120, 120)
    assert verify(config)["ok"]
    hour = list_hours(opened)[0]
    assert hour.files == [manifest["output"]] and hour.manifest is None


def test_compaction_killed_before_the_merge_landed_is_redone(lake):
    config, _ = lake
    opened = open_lake(config)
    part = list_hours(opened)[0]
    # a manifest whose output never got written (killed during phase 1)
    with open(f"{part.path}/{MANIFEST}", "wb") as f:
        f.write(b'{"output": "part-compact-lost.parquet", "inputs": ["part-w-0.parquet"]}')
    assert _count(config)[0] == 130  # nothing hidden: the inputs still count
    compact(config)
    assert _count(config) == (120, 120)
    assert all(len(p.files) == 1 and p.manifest is None for p in list_hours(opened))


def test_verify_reports_schema_errors(lake):
    config, _ = lake
    part = list_hours(open_lake(config))[0]

    pq.write_table(pa.table({"request_id": ["x"]}), f"{part.path}/part-alien-1.parquet")
    with open(f"{part.path}/part-garbage-1.parquet", "wb") as f:
        f.write(b"not parquet")
    report = verify(config)
    assert not report["ok"]
    assert any("part-alien-1.parquet" in e for e in report["schema_errors"])
    assert any("part-garbage-1.parquet" in e for e in report["schema_errors"])
    with pytest.raises(LakeError):
        compact(config)
