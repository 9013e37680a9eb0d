"""Event → Parquet conversion: layout, schema version, row groups, tolerant ndjson parsing, import hygiene."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pyarrow.parquet as pq
import pytest

from analytics_lake.errors import LakeInputError
from analytics_lake.location import LakeConfig, open_lake
from analytics_lake.synthetic import make_event
from analytics_lake.writer import (
    ROW_GROUP_SIZE,
    ndjson_file_to_table,
    ndjson_to_table,
    write_batch,
)
from tests.support import repo_root

HOUR_US = 3_600_000_000
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


def test_write_batch_groups_by_hour_with_layout_and_metadata(tmp_path):
    events = [make_event(T0 + i * HOUR_US // 2) for i in range(6)]  # 3 hours, 2 events each
    paths = write_batch(LakeConfig(f"file://{tmp_path}"), events, writer_id="gw-1", seq="0001")
    assert sorted(p.removeprefix(str(tmp_path)) for p in paths) == [
        f"/usage/dt=2026-01-01/hour={h:02d}/part-gw-1-0001.parquet" for h in range(3)
    ]
    meta = pq.read_metadata(paths[0])
    assert meta.num_rows == 2
    assert meta.metadata[b"fleetgate.schema_version"] == b"1"
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert ROW_GROUP_SIZE >= 100_000
    rows = pq.read_table(paths[0]).to_pylist()
    assert {r["request_id"] for r in rows} == {events[0]["request_id"], events[1]["request_id"]}
    assert not list(tmp_path.rglob(".tmp-*"))  # atomic write left no temp file


def test_rewriting_the_same_batch_overwrites_instead_of_duplicating(tmp_path):
    lake = LakeConfig(f"file://{tmp_path}")
    events = [make_event(T0 + i) for i in range(10)]
    first = write_batch(lake, events, writer_id="w", seq="7")
    assert write_batch(lake, events, writer_id="w", seq="7") == first
    assert sum(pq.read_metadata(p).num_rows for p in tmp_path.rglob("*.parquet")) == 10


@pytest.mark.parametrize("bad", [
    {"ts": T0},  # missing keys
    {**make_event(T0), "extra": 1},
    {**make_event(T0), "ts": "yesterday"},
    {**make_event(T0), "request_id": None},
])
def test_write_batch_rejects_events_that_do_not_match_the_schema(tmp_path, bad):
    with pytest.raises(LakeInputError):
        write_batch(LakeConfig(f"file://{tmp_path}"), [bad], writer_id="w")


def test_ndjson_parsing_keeps_good_lines_and_reports_partial_and_bad_ones(tmp_path):
    good = [make_event(T0 + i) for i in range(100)]
    data = b"".join(orjson.dumps(e) + b"\n" for e in good) + b'{"not": "an event"}\n' + b'{"request_id": "cut'
    parsed = ndjson_to_table(data)
    assert parsed.table.num_rows == 100
    assert parsed.rejected == [b'{"not": "an event"}']
    assert parsed.partial_tail == b'{"request_id": "cut'
    segment = tmp_path / "seg.ndjson"
    segment.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in good))
    assert ndjson_file_to_table(str(segment)).table.column("request_id").to_pylist() == [e["request_id"] for e in good]


@pytest.mark.parametrize("url", ["http://x", "file://relative", "s3://", "ftp://a/b"])
def test_bad_lake_urls_are_refused(url):
    with pytest.raises(LakeInputError):
        open_lake(LakeConfig(url))


def test_analytics_lake_imports_neither_aiohttp_nor_textual():
    code = (
        "import sys, analytics_lake.query, analytics_lake.spool, analytics_lake.redis_stream, "
        "analytics_lake.compaction, analytics_lake.sink\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'textual', 'gateway')]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
