"""Redis stream sink + LakeWriter: a writer killed between Parquet and XACK loses nothing; compaction removes the duplicates."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest
import redis
import redis.asyncio

from analytics_lake.compaction import compact, verify
from analytics_lake.errors import LakeInputError
from analytics_lake.location import LakeConfig
from analytics_lake.query import LakeQuery
from analytics_lake.redis_stream import LakeWriter, RedisStreamSink, pending_count
from analytics_lake.synthetic import make_event
from tests.support import eventually, repo_root

T0 = 1_767_225_600_000_000
pytestmark = pytest.mark.redis

DOOMED_WRITER = textwrap.dedent("""
    import asyncio, os, signal, sys
    from analytics_lake.location import LakeConfig
    from analytics_lake.redis_stream import LakeWriter

    def die(paths):
        os.kill(os.getpid(), signal.SIGKILL)  # the worst moment: Parquet durable, nothing acked

    writer = LakeWriter(sys.argv[1], LakeConfig(sys.argv[2]), consumer="doomed", batch_rows=500,
                        flush_interval_s=30, on_written=die)
    asyncio.run(writer.run())
""")


def counts(config: LakeConfig) -> tuple[int, int]:
    with LakeQuery(config) as q:
        return tuple(q.sql("SELECT count(*), count(DISTINCT request_id) FROM usage").to_pylist()[0].values())


async def test_a_dead_writers_entries_are_claimed_and_nothing_is_lost(redis_url, tmp_path):
    config = LakeConfig(f"file://{tmp_path}/lake")
    sink = RedisStreamSink(redis_url)
    await sink.start()
    ids = []
    for i in range(2000):
        event = make_event(T0 + i * 1000)
        await sink.emit(event)
        ids.append(event["request_id"])
    await sink.flush()
    await sink.close()

    script = tmp_path / "doomed.py"
    script.write_text(DOOMED_WRITER)
    done = subprocess.run([sys.executable, str(script), redis_url, config.url], cwd=repo_root(), timeout=60,
                          env={**os.environ, "PYTHONPATH": str(repo_root())})
    assert done.returncode == -9
    assert counts(config) == (500, 500)  # its file is in the lake ...
    assert await pending_count(redis_url) == 500  # ... but never acknowledged

    # claim_idle_ms well above a batch's lifetime, as documented: else live writers steal from each other
    writers = [LakeWriter(redis_url, config, consumer=f"w{n}", batch_rows=300, flush_interval_s=0.1,
                          block_ms=50, claim_idle_ms=2000) for n in (1, 2)]
    tasks = [asyncio.create_task(w.run()) for w in writers]
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while client.xlen("fg:usage") and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert client.xlen("fg:usage") == 0
    finally:
        client.close()
        for w in writers:
            w.stop()
        await asyncio.gather(*tasks)
    assert sum(w.entries_claimed for w in writers) == 500
    assert await pending_count(redis_url) == 0
    rows, distinct = counts(config)
    assert distinct == 2000 and rows == 2500  # at-least-once: the doomed batch was written twice
    assert verify(config)["duplicate_request_ids"] == 500
    compact(config)
    assert counts(config) == (2000, 2000)
    with LakeQuery(config) as q:
        assert set(q.sql("SELECT request_id FROM usage").column(0).to_pylist()) == set(ids)
    assert verify(config)["ok"]


async def test_stream_sink_rejects_bad_events(redis_url):
    sink = RedisStreamSink(redis_url)
    await sink.start()
    try:
        with pytest.raises(LakeInputError):
            await sink.emit({"request_id": "only"})
    finally:
        await sink.close()


async def test_a_poison_entry_is_set_aside_and_does_not_block_the_stream(redis_url, tmp_path):
    config = LakeConfig(f"file://{tmp_path}/lake")
    client = redis.asyncio.Redis.from_url(redis_url)
    good = make_event(T0)
    try:
        await client.xadd("fg:usage", {"e": b"{not json"})
        await client.xadd("fg:usage", {"e": b'{"request_id": "missing the rest"}'})
        sink = RedisStreamSink(redis_url)
        await sink.start()
        await sink.emit(good)
        await sink.close()
        writer = LakeWriter(redis_url, config, consumer="w1", flush_interval_s=0.1, block_ms=50)
        task = asyncio.create_task(writer.run())
        deadline = asyncio.get_running_loop().time() + 10
        while await client.xlen("fg:usage") and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        writer.stop()
        await task
        assert await client.xlen("fg:usage:rejected") == 2
    finally:
        await client.aclose()
    assert counts(config) == (1, 1)


async def test_stream_lag_is_the_age_of_the_oldest_entry_not_yet_written(redis_url, tmp_path):
    sink = RedisStreamSink(redis_url)
    await sink.start()
    writer = LakeWriter(redis_url, LakeConfig(f"file://{tmp_path}/lake"), consumer="w", flush_interval_s=0.1,
                        block_ms=50)
    try:
        assert await sink.lag_s() == 0.0
        await sink.emit(make_event(T0))
        await asyncio.sleep(0.3)
        await sink.emit(make_event(T0 + 1))
        assert 0.3 <= await sink.lag_s() < 10
        task = asyncio.create_task(writer.run())
        try:
            await eventually(lambda: _lag_is_zero(sink), timeout=20, what="the writer to drain the stream")
        finally:
            writer.stop()
            await task
    finally:
        await sink.close()
    assert counts(LakeConfig(f"file://{tmp_path}/lake")) == (2, 2)


async def _lag_is_zero(sink: RedisStreamSink) -> bool:
    return await sink.lag_s() == 0.0
