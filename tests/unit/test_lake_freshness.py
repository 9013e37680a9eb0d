"""Lake freshness and status from footers and listings: newest event, rows per day, spool backlog, compaction record."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pyarrow.parquet as pq
import pytest

from analytics_lake import rollup
from analytics_lake.catalog import list_hours
from analytics_lake.compaction import begin_hour, compact
from analytics_lake.errors import LakeError, LakeInputError
from analytics_lake.freshness import (
    lake_freshness,
    lake_status,
    read_compaction_record,
    record_compaction,
    spool_backlog,
    spool_dir_live,
)
from analytics_lake.location import LakeConfig, open_lake
from analytics_lake.schema import USAGE_SCHEMA
from analytics_lake.spool import SpoolSink
from analytics_lake.spool_files import LOCK_FILE, acquire_lock, release_lock, segment_name
from analytics_lake.synthetic import make_event
from analytics_lake.writer import events_to_table, write_batch

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs
HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
NOW = datetime(2026, 1, 2, 6, 0, tzinfo=UTC)


def at(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, UTC)


def iso(us: int) -> str:
    return at(us).isoformat(timespec="microseconds")


@pytest.fixture
def config(tmp_path) -> LakeConfig:
    return LakeConfig(f"file://{tmp_path}/lake")


@pytest.fixture
def two_days(config) -> LakeConfig:
    """Day 1: hours 00 (2 files, 30 rows) and 05 (1 file, 5 rows); day 2: hour 03 (1 file, 7 rows).

    The newest event is 2026-01-02T03:59:58.123456; its file is written first, a late file for an old hour last.
    """
    newest = T0 + DAY_US + 3 * HOUR_US + 3_598_123_456
    write_batch(config, [make_event(newest - i * 1_000_000) for i in range(7)], writer_id="w", seq="1")
    write_batch(config, [make_event(T0 + i) for i in range(20)], writer_id="w", seq="2")
    write_batch(config, [make_event(T0 + 5 * HOUR_US + i) for i in range(5)], writer_id="w", seq="3")
    write_batch(config, [make_event(T0 + 100 + i) for i in range(10)], writer_id="late", seq="4")
    return config


def test_newest_event_and_lag_come_exactly_from_the_footers(two_days):
    fresh = lake_freshness(two_days, now=NOW)
    newest = T0 + DAY_US + 3 * HOUR_US + 3_598_123_456
    assert fresh["newest_event"] == iso(newest) == "2026-01-02T03:59:58.123456+00:00"
    assert fresh["lag_s"] == pytest.approx((NOW - at(newest)).total_seconds(), abs=1e-6)
    assert fresh["checked_at"] == "2026-01-02T06:00:00.000000+00:00"
    # nothing rolled up yet: the oldest closed hour (day 1, 00:00) ended 29 h before NOW
    assert fresh["rollup_lag_s"] == 29 * 3600.0


def test_freshness_reads_only_the_newest_hour(two_days, tmp_path):
    # garbage in an old hour: status reports it, freshness never opens it (it reads the newest hour's footers only)
    (tmp_path / "lake/usage/dt=2026-01-01/hour=05/part-junk-1.parquet").write_bytes(b"not parquet")
    assert lake_freshness(two_days, now=NOW)["newest_event"] == "2026-01-02T03:59:58.123456+00:00"
    status = lake_status(two_days, spool_root=None, now=NOW)
    assert len(status["problems"]) == 1 and "part-junk-1.parquet: footer unreadable" in status["problems"][0]
    assert status["files"] == 5 and status["rows"] == 42  # the unreadable file counts as a file, not as rows


def test_an_empty_newest_file_falls_back_to_the_hour_before(two_days, tmp_path):
    hour = tmp_path / "lake/usage/dt=2026-01-02/hour=09"
    hour.mkdir(parents=True)
    pq.write_table(USAGE_SCHEMA.empty_table(), hour / "part-empty-1.parquet")
    assert lake_freshness(two_days, now=NOW)["newest_event"] == "2026-01-02T03:59:58.123456+00:00"


def test_a_file_without_statistics_is_read_for_its_ts_column(config, tmp_path):
    hour = tmp_path / "lake/usage/dt=2026-01-01/hour=00"
    hour.mkdir(parents=True)
    table = events_to_table([make_event(T0 + i * 7) for i in range(4)])
    pq.write_table(table, hour / "part-foreign-1.parquet", write_statistics=False)
    assert pq.read_metadata(hour / "part-foreign-1.parquet").row_group(0).column(1).statistics is None
    fresh = lake_freshness(config, now=NOW)
    assert fresh["newest_event"] == iso(T0 + 21)


def test_status_counts_files_and_rows_per_day_from_footers(two_days):
    status = lake_status(two_days, spool_root=None, now=NOW)
    assert status["days"] == [
        {"dt": "2026-01-01", "hours": 2, "files": 3, "rows": 35},
        {"dt": "2026-01-02", "hours": 1, "files": 1, "rows": 7},
    ]
    assert (status["files"], status["rows"], status["empty"]) == (4, 42, False)
    assert status["newest_event"] == "2026-01-02T03:59:58.123456+00:00"
    assert status["uncompacted_hours"] == 1 and status["pending_compactions"] == []
    assert status["last_compaction"] is None and status["problems"] == []
    assert status["spool"] == []


def test_rollup_lag_and_stale_hours_follow_rollup_updates(two_days):
    rollup.update(two_days, now=NOW)
    status = lake_status(two_days, spool_root=None, now=NOW)
    assert status["rollup_lag_s"] == 0.0 and status["rollup"]["stale"] == []
    assert status["rollup"]["rolled_up"] == 3 and status["rollup"]["closed_hours"] == 3
    # a late file in day 1 hour 05 makes that hour's rollup stale: lag counts from the end of that hour
    write_batch(two_days, [make_event(T0 + 5 * HOUR_US + 99)], writer_id="late", seq="5")
    status = lake_status(two_days, spool_root=None, now=NOW)
    assert status["rollup"]["stale"] == ["2026-01-01T05"]
    assert status["rollup_lag_s"] == (NOW - at(T0 + 6 * HOUR_US)).total_seconds() == 24 * 3600.0
    assert lake_freshness(two_days, now=NOW)["rollup_lag_s"] == 24 * 3600.0


def test_an_unfinished_compaction_is_pending_and_never_double_counted(two_days):
    lake = open_lake(two_days)
    begin_hour(lake, list_hours(lake)[0])  # merged output written, inputs not yet deleted
    status = lake_status(two_days, spool_root=None, now=NOW)
    assert status["pending_compactions"] == ["dt=2026-01-01/hour=00"]
    assert status["days"][0] == {"dt": "2026-01-01", "hours": 2, "files": 2, "rows": 35}


def test_compaction_is_recorded_and_shown(two_days, tmp_path):
    report = compact(two_days)
    assert (report["hours_compacted"], report["hours_resumed"], report["files_merged"]) == (1, 0, 2)
    at_ = datetime(2026, 1, 2, 5, 30, tzinfo=UTC)
    record = record_compaction(two_days, report, now=at_)
    expected = {"finished_at": "2026-01-02T05:30:00.000000+00:00", **report}
    assert record == expected
    assert orjson.loads((tmp_path / "lake/_meta/compaction.json").read_bytes()) == expected
    status = lake_status(two_days, spool_root=None, now=NOW)
    assert status["last_compaction"] == expected
    assert status["days"][0] == {"dt": "2026-01-01", "hours": 2, "files": 2, "rows": 35}
    assert status["uncompacted_hours"] == 0
    assert [p.name for p in (tmp_path / "lake/_meta").iterdir()] == ["compaction.json"]  # no temp file left


def test_a_corrupt_compaction_record_is_a_problem_not_a_failure(two_days, tmp_path):
    (tmp_path / "lake/_meta").mkdir()
    (tmp_path / "lake/_meta/compaction.json").write_bytes(b"{half")
    with pytest.raises(LakeError, match="compaction record .* is unreadable"):
        read_compaction_record(two_days)
    status = lake_status(two_days, spool_root=None, now=NOW)
    assert status["last_compaction"] is None and len(status["problems"]) == 1
    assert status["rows"] == 42


def test_an_empty_lake(config, tmp_path):
    fresh = lake_freshness(config, now=NOW)
    assert fresh == {"newest_event": None, "lag_s": None, "rollup_lag_s": None,
                     "checked_at": "2026-01-02T06:00:00.000000+00:00"}
    status = lake_status(config, spool_root=tmp_path / "no-spool", now=NOW)
    assert status["empty"] and status["files"] == 0 and status["days"] == [] and status["spool"] == []


def test_a_naive_now_is_refused(config):
    with pytest.raises(LakeInputError, match="timezone-aware"):
        lake_freshness(config, now=datetime(2026, 1, 1))


def _segment(directory, stamp_us: int, events: list[dict]) -> int:
    data = b"".join(orjson.dumps(e) + b"\n" for e in events)
    (directory / segment_name(stamp_us)).write_bytes(data)
    return len(data)


async def test_spool_backlog_counts_segments_and_sees_live_owners(config, tmp_path):
    root = tmp_path / "spool"
    dead = root / "gw-dead"
    dead.mkdir(parents=True)
    now_us = int(NOW.timestamp() * 1e6)
    size = _segment(dead, now_us - 90_000_000, [make_event(T0 + i) for i in range(3)])
    size += _segment(dead, now_us - 30_000_000, [make_event(T0 + 10 + i) for i in range(2)])
    (dead / segment_name(now_us - 120_000_000)).write_bytes(b"")  # an empty segment: no age of its own
    (dead / "rejected-0000000000000001.ndjson").write_bytes(b"{}\n")
    fd = acquire_lock(dead)  # a lock file exists, nobody holds it
    release_lock(fd)
    never_locked = root / "gw-new"
    never_locked.mkdir()

    sink = SpoolSink(root / "gw-live", config, "gw-live", flush_interval_s=3600, fsync_ms=10_000)
    await sink.start()
    try:
        events = [make_event(T0 + i) for i in range(4)]
        for event in events:
            await sink.emit(event)
        live_bytes = sum(len(orjson.dumps(e)) + 1 for e in events)
        active = next((root / "gw-live").glob("seg-*.ndjson"))
        live_now = at(int(active.name[4:20]) + 2_500_000)
        backlog = {d["writer"]: d for d in spool_backlog(root, now=live_now)}
        assert backlog["gw-live"] == {"writer": "gw-live", "live": True, "segments": 1, "bytes": live_bytes,
                                      "oldest_segment_age_s": 2.5, "rejected_files": 0}
        assert spool_dir_live(root / "gw-live")
    finally:
        await sink.close()

    backlog = spool_backlog(root, now=NOW)
    assert [d["writer"] for d in backlog] == ["gw-dead", "gw-live", "gw-new"]
    assert backlog[0] == {"writer": "gw-dead", "live": False, "segments": 3, "bytes": size,
                          "oldest_segment_age_s": 90.0, "rejected_files": 1}
    assert backlog[1]["live"] is False and backlog[1]["segments"] == 0  # closed: its segment went to Parquet
    assert backlog[2] == {"writer": "gw-new", "live": False, "segments": 0, "bytes": 0,
                          "oldest_segment_age_s": None, "rejected_files": 0}
    assert not (never_locked / LOCK_FILE).exists()  # the probe creates nothing
    release_lock(acquire_lock(dead))  # and leaves nothing held
    status = lake_status(config, spool_root=root, now=NOW)
    assert status["spool"] == backlog and status["rows"] == 4  # the live sink's close wrote its rows


def test_compact_records_its_run(two_days):
    before = datetime.now(UTC)
    report = compact(two_days)
    record = read_compaction_record(two_days)
    assert record == {"finished_at": record["finished_at"], **report}
    assert before <= datetime.fromisoformat(record["finished_at"]) <= datetime.now(UTC)
    assert lake_status(two_days, spool_root=None)["last_compaction"] == record
