"""SpoolSink end to end: every emitted event lands in Parquet exactly once, on disk and on S3, even after SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import orjson
import pytest

from analytics_lake.errors import LakeError, LakeInputError, SpoolLocked
from analytics_lake.location import LakeConfig
from analytics_lake.query import LakeQuery
from analytics_lake.spool import SpoolSink
from analytics_lake.spool_files import flush_spool_tree, segment_name
from analytics_lake.synthetic import make_event
from tests.support import repo_root, wait_for

T0 = 1_767_225_600_000_000


def lake_ids(config: LakeConfig) -> list[str]:
    with LakeQuery(config) as q:
        return q.sql("SELECT request_id FROM usage").column(0).to_pylist()


async def run_sink(spool_dir, config: LakeConfig, n: int, **kwargs) -> tuple[list[str], SpoolSink]:
    sink = SpoolSink(spool_dir, config, "gw-1", **kwargs)
    await sink.start()
    ids = []
    for i in range(n):
        event = make_event(T0 + i * 1_000_000)  # spans several hours
        await sink.emit(event)
        ids.append(event["request_id"])
    await sink.flush()
    await sink.close()
    return ids, sink


async def test_n_events_become_exactly_n_rows_locally(tmp_path):
    config = LakeConfig(f"file://{tmp_path}/lake")
    ids, sink = await run_sink(tmp_path / "spool" / "gw-1", config, 5000, segment_bytes=200_000)
    found = lake_ids(config)
    assert len(found) == 5000 and set(found) == set(ids)
    assert sink.report.segments > 1  # rotation by size happened
    assert not list((tmp_path / "spool" / "gw-1").glob("seg-*"))  # segments deleted after Parquet


@pytest.mark.s3
async def test_n_events_become_exactly_n_rows_on_s3(tmp_path, s3_server, s3_bucket):
    config = LakeConfig(f"s3://{s3_bucket}/lake", s3_endpoint=s3_server.endpoint, s3_access_key="test",
                        s3_secret_key="test")
    ids, _ = await run_sink(tmp_path / "spool", config, 3000, segment_bytes=300_000)
    found = lake_ids(config)
    assert len(found) == 3000 and set(found) == set(ids)


async def test_flush_interval_writes_parquet_without_an_explicit_flush(tmp_path):
    config = LakeConfig(f"file://{tmp_path}/lake")
    sink = SpoolSink(tmp_path / "spool", config, "gw-1", flush_interval_s=0.2, fsync_ms=10)
    await sink.start()
    try:
        event = make_event(T0)
        await sink.emit(event)
        deadline = asyncio.get_running_loop().time() + 10
        while sink.report.rows < 1 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert lake_ids(config) == [event["request_id"]]
    finally:
        await sink.close()


async def test_a_live_spool_dir_is_locked_and_skipped(tmp_path):
    config = LakeConfig(f"file://{tmp_path}/lake")
    sink = SpoolSink(tmp_path / "spool" / "gw-1", config, "gw-1")
    await sink.start()
    try:
        await sink.emit(make_event(T0))
        with pytest.raises(SpoolLocked):
            await SpoolSink(tmp_path / "spool" / "gw-1", config, "gw-1").start()
        report = flush_spool_tree(tmp_path / "spool", config)
        assert report.skipped_dirs == ["gw-1"] and report.rows == 0
        with pytest.raises(LakeInputError):
            await sink.emit({"request_id": "x"})
    finally:
        await sink.close()
    with pytest.raises(LakeError):
        await sink.emit(make_event(T0))
    assert len(lake_ids(config)) == 1


async def test_leftover_segments_with_a_partial_line_are_replayed_and_counted(tmp_path):
    config = LakeConfig(f"file://{tmp_path}/lake")
    spool = tmp_path / "spool" / "gw-1"
    spool.mkdir(parents=True)
    events = [make_event(T0 + i) for i in range(50)]
    (spool / segment_name(1)).write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events[:20]))
    (spool / segment_name(2)).write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events[20:]) + b'{"request_')
    sink = SpoolSink(spool, config, "gw-1")
    await sink.start()
    await sink.flush()
    await sink.close()
    assert sorted(lake_ids(config)) == sorted(e["request_id"] for e in events)
    assert sink.report.partial_lines == 1 and sink.report.segments == 2


EMITTER = textwrap.dedent("""
    import asyncio, sys
    from analytics_lake.location import LakeConfig
    from analytics_lake.spool import SpoolSink
    from analytics_lake.synthetic import make_event

    async def main():
        sink = SpoolSink(sys.argv[1], LakeConfig(sys.argv[2]), "gw-1", segment_bytes=40_000,
                         flush_interval_s=0.3, fsync_ms=20)
        await sink.start()
        i = 0
        while True:
            event = make_event(1_767_225_600_000_000 + i * 1000, request_id=f"req-{i:08d}")
            await sink.emit(event)
            sys.stdout.write(event["request_id"] + "\\n")  # acknowledged: emit returned
            sys.stdout.flush()
            i += 1
            if i % 50 == 0:
                await asyncio.sleep(0)  # let the background flusher run, as a server would

    asyncio.run(main())
""")


async def test_sigkill_loses_no_acknowledged_event(tmp_path):
    config = LakeConfig(f"file://{tmp_path}/lake")
    spool = tmp_path / "spool" / "gw-1"
    script = tmp_path / "emitter.py"
    script.write_text(EMITTER)
    proc = subprocess.Popen([sys.executable, str(script), str(spool), config.url], stdout=subprocess.PIPE,
                            cwd=repo_root(), env={**os.environ, "PYTHONPATH": str(repo_root())})
    acked: list[str] = []
    assert proc.stdout is not None
    while len(acked) < 4000:
        line = proc.stdout.readline()
        assert line, "emitter exited early"
        acked.append(line.decode().strip())
    wait_for(lambda: list((tmp_path / "lake").rglob("*.parquet")), timeout=10, what="some Parquet before the kill")
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate(timeout=10)
    acked += [x for x in rest.decode().split("\n") if x.strip() and len(x.strip()) == 12]
    assert proc.returncode == -signal.SIGKILL
    assert list(spool.glob("seg-*.ndjson"))  # the kill left segments behind

    sink = SpoolSink(spool, config, "gw-1")  # a restart replays them
    await sink.start()
    await sink.flush()
    await sink.close()
    found = lake_ids(config)
    assert len(found) == len(set(found))  # exactly once
    assert set(acked) <= set(found)  # nothing acknowledged is lost


async def test_lag_is_the_age_of_the_oldest_event_not_yet_in_parquet(tmp_path):
    sink = SpoolSink(tmp_path / "spool", LakeConfig(f"file://{tmp_path}/lake"), "gw-1", flush_interval_s=3600)
    await sink.start()
    try:
        assert await sink.lag_s() == 0.0
        await sink.emit(make_event(T0))
        await asyncio.sleep(0.3)
        await sink.emit(make_event(T0 + 1))  # a newer event does not make the oldest one younger
        assert 0.3 <= await sink.lag_s() < 10
        await sink.flush()
        assert await sink.lag_s() == 0.0
    finally:
        await sink.close()
