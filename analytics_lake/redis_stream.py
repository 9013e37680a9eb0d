"""Usage events through a Redis stream: `RedisStreamSink` (XADD) and `LakeWriter` (consumer group → Parquet).

At-least-once: entries are XACKed only after their Parquet file is durable; a writer that dies
leaves them pending and a live writer XAUTOCLAIMs them. Duplicates are removed by compaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import orjson
import pyarrow as pa
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from analytics_lake import rollup
from analytics_lake.errors import LakeError, LakeInputError
from analytics_lake.location import Lake, LakeConfig, check_name_part, open_lake
from analytics_lake.writer import check_event, events_to_table, write_table

log = logging.getLogger(__name__)

DEFAULT_STREAM = "fg:usage"
DEFAULT_GROUP = "lake-writers"
FIELD = b"e"  # one field per entry: the event as JSON


class RedisStreamSink:
    """Usage sink (see `UsageSink`): emit returns once XADD is acknowledged by Redis.

    Args:
        maxlen: optional approximate cap on the stream (a safeguard: trimming can drop unwritten
            events, so it is off by default).
    """

    def __init__(self, redis_url: str, stream: str = DEFAULT_STREAM, *, maxlen: int | None = None) -> None:
        self._url = redis_url
        self.stream = stream
        self._maxlen = maxlen
        self._client: aioredis.Redis | None = None

    async def start(self) -> None:
        self._client = aioredis.Redis.from_url(self._url)
        await self._client.ping()

    async def emit(self, event: dict) -> None:
        if self._client is None:
            raise LakeError("usage sink is not running")
        check_event(event)
        await self._client.xadd(self.stream, {FIELD: orjson.dumps(event)}, maxlen=self._maxlen,
                                approximate=True)

    async def flush(self) -> None:
        """Nothing to do here: LakeWriter processes own the Parquet side."""

    async def lag_s(self) -> float:
        """The stream's first entry is the oldest event not yet in Parquet: writers XDEL what they wrote."""
        if self._client is None:
            raise LakeError("usage sink is not running")
        first = await self._client.xrange(self.stream, count=1)
        if not first:
            return 0.0
        entry_ms = int(first[0][0].split(b"-", 1)[0])
        return max(0.0, time.time() - entry_ms / 1000)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class LakeWriter:
    """One consumer of the usage stream's group: batches entries into Parquet, then XACK + XDEL.

    Args:
        consumer: this writer's name in the group (also its Parquet writer id).
        batch_rows / flush_interval_s: write a file at this many rows or this age of the batch.
        claim_idle_ms: entries pending this long at another consumer are taken over (it died).
        on_written: called with the Parquet paths after they are durable and before XACK
            (metrics, logging; tests use it to die at the worst moment).
    """

    def __init__(
        self,
        redis_url: str,
        lake: Lake | LakeConfig,
        *,
        stream: str = DEFAULT_STREAM,
        group: str = DEFAULT_GROUP,
        consumer: str = "writer-1",
        batch_rows: int = 100_000,
        flush_interval_s: float = 5.0,
        block_ms: int = 500,
        claim_idle_ms: int = 60_000,
        on_written: Callable[[list[str]], None] | None = None,
        rollups: bool = False,
    ) -> None:
        self._url = redis_url
        self._lake_config = lake
        self.stream = stream
        self.group = group
        self.consumer = check_name_part(consumer, "consumer name")
        self._batch_rows = batch_rows
        self._flush_interval_s = flush_interval_s
        self._block_ms = block_ms
        self._claim_idle_ms = claim_idle_ms
        self._on_written = on_written
        self._rollups = rollup.Maintainer(lake) if rollups else None  # keeps the hourly rollups current
        self._stop = asyncio.Event()
        self.rows_written = 0
        self.entries_claimed = 0

    def stop(self) -> None:
        """Ask `run` to write what it holds and return (safe from a signal handler)."""
        self._stop.set()

    async def run(self) -> None:
        """Consume until `stop()`; the batch in hand is written and acked before returning."""
        lake = await asyncio.to_thread(open_lake, self._lake_config)
        client = aioredis.Redis.from_url(self._url)
        backlog: bytes | None = b"0"  # first re-read our own pending entries (a previous run died)
        try:
            await self._ensure_group(client)
            batch: dict[bytes, bytes] = {}  # entry id → event JSON; a re-delivered id is not added twice
            started = time.monotonic()
            while not self._stop.is_set():
                entries: list[tuple[bytes, dict]] = []
                if backlog is not None:
                    entries = await self._read(client, backlog)
                    backlog = entries[-1][0] if entries else None
                if backlog is None:
                    entries += await self._claim(client)
                    entries += await self._read(client, b">")
                for entry_id, fields in entries:
                    if fields and entry_id not in batch:  # empty fields: deleted meanwhile
                        batch[entry_id] = fields.get(FIELD, b"")
                if not batch:
                    started = time.monotonic()
                    if self._rollups is not None and self._rollups.due():  # idle: the last hour closes too
                        await asyncio.to_thread(self._rollups.run)
                elif len(batch) >= self._batch_rows or time.monotonic() - started >= self._flush_interval_s:
                    await self._commit(client, lake, batch)
                    batch, started = {}, time.monotonic()
            # stop() asked: also write what was added before it (the loop may have been busy with rollups)
            while entries := await self._read(client, b">", block=False):
                for entry_id, fields in entries:
                    if fields and entry_id not in batch:
                        batch[entry_id] = fields.get(FIELD, b"")
                if len(batch) >= self._batch_rows:
                    await self._commit(client, lake, batch)
                    batch = {}
            if batch:
                await self._commit(client, lake, batch)
        finally:
            await client.aclose()

    # -- internals -------------------------------------------------------------------------

    async def _ensure_group(self, client: aioredis.Redis) -> None:
        try:
            await client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def _claim(self, client: aioredis.Redis) -> list[tuple[bytes, dict]]:
        """Take over entries another consumer has held for longer than claim_idle_ms (it died)."""
        out: list[tuple[bytes, dict]] = []
        cursor: bytes = b"0-0"
        while True:
            reply = await client.xautoclaim(self.stream, self.group, self.consumer, self._claim_idle_ms,
                                            start_id=cursor, count=min(self._batch_rows, 10_000))
            cursor, entries = reply[0], reply[1]
            out.extend(entries)
            if cursor == b"0-0" or not entries:
                break
        if out:
            self.entries_claimed += len(out)
            log.warning("lake writer %s: claimed %d entries of a dead writer", self.consumer, len(out))
        return out

    async def _read(self, client: aioredis.Redis, start: bytes, *, block: bool = True) -> list[tuple[bytes, dict]]:
        """`>`: new entries (waiting up to block_ms, with `block`); an id: our own pending entries after it."""
        block_ms = self._block_ms if start == b">" and block else None
        reply = await client.xreadgroup(self.group, self.consumer, {self.stream: start},
                                        count=self._batch_rows, block=block_ms)
        return list(reply[0][1]) if reply else []

    async def _commit(self, client: aioredis.Redis, lake: Lake, batch: dict[bytes, bytes]) -> None:
        ids = list(batch)
        table, rejected = _parse(batch)
        if rejected:  # never block the stream on a poison entry, never drop it silently either
            log.error("lake writer %s: %d invalid entries moved to %s:rejected", self.consumer, len(rejected),
                      self.stream)
            async with client.pipeline(transaction=False) as pipe:
                for raw in rejected:
                    pipe.xadd(f"{self.stream}:rejected", {FIELD: raw})
                await pipe.execute()
        seq = ids[0].decode().replace("-", "_")
        paths = await asyncio.to_thread(write_table, lake, table, writer_id=self.consumer, seq=seq)
        if self._on_written is not None:
            self._on_written(paths)
        for start in range(0, len(ids), 10_000):
            chunk = ids[start:start + 10_000]
            async with client.pipeline(transaction=True) as pipe:
                pipe.xack(self.stream, self.group, *chunk)
                pipe.xdel(self.stream, *chunk)
                await pipe.execute()
        self.rows_written += table.num_rows
        log.info("lake writer %s: %d rows → %d files", self.consumer, table.num_rows, len(paths))
        if self._rollups is not None and self._rollups.due():
            await asyncio.to_thread(self._rollups.run)


def _parse(batch: dict[bytes, bytes]) -> tuple[pa.Table, list[bytes]]:
    """Events → table; entries that are not valid events are returned apart (fast path: all valid)."""
    events: list[dict] = []
    rejected: list[bytes] = []
    for raw in batch.values():
        try:
            event = orjson.loads(raw)
            check_event(event)
            events.append(event)
        except (orjson.JSONDecodeError, LakeInputError, AttributeError):
            rejected.append(raw)
    try:
        return events_to_table(events), rejected
    except LakeInputError:
        good = []
        for event in events:
            try:
                events_to_table([event])
                good.append(event)
            except LakeInputError:
                rejected.append(orjson.dumps(event))
        return events_to_table(good), rejected


async def pending_count(redis_url: str, stream: str = DEFAULT_STREAM, group: str = DEFAULT_GROUP) -> int:
    """Entries delivered to some consumer and not yet acknowledged (for ops and tests)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        info = await client.xpending(stream, group)
        return int(info["pending"])
    except RedisError as e:
        raise LakeError(f"cannot read pending usage entries: {e}") from e
    finally:
        await client.aclose()
