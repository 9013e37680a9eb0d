"""SpoolSink: usage events appended to local segment files, converted to Parquet in the background.

emit() is one os.write (the event is then the kernel's: SIGKILL loses nothing); fsync is batched.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pyarrow as pa

from analytics_lake import rollup
from analytics_lake.errors import LakeError, SpoolLocked
from analytics_lake.location import Lake, LakeConfig, check_name_part, open_lake
from analytics_lake.spool_files import (
    FlushReport,
    acquire_lock,
    convert_segment,
    list_segments,
    release_lock,
    segment_name,
    segment_stamp,
)
from analytics_lake.writer import check_event, fsync_dir

log = logging.getLogger(__name__)

_RETRY_S = 1.0  # after a failed conversion (e.g. S3 unreachable); segments stay on disk meanwhile


@dataclass(slots=True, eq=False)
class _Segment:
    path: Path
    stamp: int
    fd: int | None
    created: float = field(default_factory=time.monotonic)
    first_row_at: float | None = None  # wall clock of its first event (a replayed segment: when it was opened)
    bytes: int = 0
    rows: int = 0
    synced_bytes: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # fsync vs. close/convert of the same fd


class SpoolSink:
    """Spool-file usage sink (see `UsageSink`); one per process, in its own directory.

    Args:
        spool_dir: this writer's directory, e.g. `<state>/spool/<writer_id>/` (locked while open).
        lake: where Parquet goes.
        writer_id: goes into Parquet file names; must be unique among live writers.
        fsync_ms: fsync the active segment at most this long after a write (machine-crash bound).
        segment_bytes / flush_rows / flush_interval_s: rotate the active segment at this size, row
            count or age; rotated segments are converted to Parquet right away.
    """

    def __init__(
        self,
        spool_dir: str | Path,
        lake: Lake | LakeConfig,
        writer_id: str,
        *,
        fsync_ms: int = 200,
        segment_bytes: int = 64 * 1024 * 1024,
        flush_interval_s: float = 10.0,
        flush_rows: int = 500_000,
        rollups: bool = False,
    ) -> None:
        self.spool_dir = Path(spool_dir)
        self.writer_id = check_name_part(writer_id, "writer id")
        self._lake_config = lake
        self._lake: Lake | None = None
        self._fsync_s = fsync_ms / 1000
        self._segment_bytes = segment_bytes
        self._flush_interval_s = flush_interval_s
        self._flush_rows = flush_rows
        self._lock_fd: int | None = None
        self._active: _Segment | None = None
        self._closed: deque[_Segment] = deque()
        self._last_stamp = 0
        self._dir_dirty = False
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._drain_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        # with `rollups`, the flush loop also keeps the lake's hourly rollups current (analytics_lake.rollup)
        self._rollups = rollup.Maintainer(lake) if rollups else None
        self.report = FlushReport()  # cumulative: segments/rows written to Parquet, partial/rejected lines
        self.emitted = 0

    async def start(self) -> None:
        self._lake = await asyncio.to_thread(open_lake, self._lake_config)
        try:
            self._lock_fd = await asyncio.to_thread(acquire_lock, self.spool_dir)
        except SpoolLocked as e:
            raise SpoolLocked(
                f"usage spool {self.spool_dir} is locked by another running gateway (same state dir and "
                "port); stop it, or start this one with another port or state dir") from e
        for path in list_segments(self.spool_dir):
            stamp = segment_stamp(path.name) or 0
            self._closed.append(_Segment(path, stamp, None, first_row_at=stamp / 1e6))
            self._last_stamp = max(self._last_stamp, stamp)
        if self._closed:
            log.info("spool %s: replaying %d leftover segments", self.spool_dir, len(self._closed))
        self._active = self._open_segment()
        self._tasks = [asyncio.create_task(self._fsync_loop()), asyncio.create_task(self._flush_loop())]
        if self._closed:
            self._wake.set()

    async def emit(self, event: dict) -> None:
        seg = self._active
        if seg is None or self._stop.is_set():
            raise LakeError("usage sink is not running")
        check_event(event)
        line = orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
        view = memoryview(line)
        while view:
            view = view[os.write(seg.fd, view):]  # type: ignore[arg-type]
        if not seg.rows:
            seg.first_row_at = time.time()
        seg.bytes += len(line)
        seg.rows += 1
        self.emitted += 1
        if seg.bytes >= self._segment_bytes or seg.rows >= self._flush_rows:
            self._rotate()

    async def flush(self) -> None:
        if self._active is not None and self._active.rows:
            self._rotate()
        await self._drain()

    async def lag_s(self) -> float:
        waiting = [seg.first_row_at for seg in (*self._closed, self._active)
                   if seg is not None and seg.first_row_at is not None]
        return max(0.0, time.time() - min(waiting)) if waiting else 0.0

    async def close(self) -> None:
        if self._lock_fd is None:
            return
        self._stop.set()
        self._wake.set()
        try:
            await asyncio.gather(*self._tasks)
            if self._active is not None:
                active, self._active = self._active, None
                self._closed.append(active)
            await self._drain()
        finally:
            for seg in (*self._closed, *(s for s in [self._active] if s)):
                if seg.fd is not None:
                    os.fsync(seg.fd)
                    os.close(seg.fd)
                    seg.fd = None
            release_lock(self._lock_fd)
            self._lock_fd = None

    # -- internals -------------------------------------------------------------------------

    def _open_segment(self) -> _Segment:
        stamp = max(time.time_ns() // 1000, self._last_stamp + 1)
        self._last_stamp = stamp
        path = self.spool_dir / segment_name(stamp)
        # 0600: usage events name orgs, keys and models; nobody else on the machine may read them
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._dir_dirty = True
        return _Segment(path, stamp, fd)

    def _rotate(self) -> None:
        old = self._active
        self._active = self._open_segment()
        if old is not None:
            self._closed.append(old)
        self._wake.set()

    async def _fsync_loop(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self._fsync_s)
            except TimeoutError:
                pass
            await self._sync_active()

    async def _sync_active(self) -> None:
        seg = self._active
        if seg is None:
            return
        if self._dir_dirty:
            self._dir_dirty = False
            await asyncio.to_thread(fsync_dir, str(self.spool_dir))
        if seg.synced_bytes == seg.bytes:
            return
        target = seg.bytes
        async with seg.lock:
            if seg.fd is not None:
                await asyncio.to_thread(os.fsync, seg.fd)
        seg.synced_bytes = target

    async def _flush_loop(self) -> None:
        retry = False
        while not self._stop.is_set():
            timeout = _RETRY_S if retry else self._flush_interval_s
            if self._active is not None and self._active.rows:
                age = time.monotonic() - self._active.created
                timeout = min(timeout, max(0.0, self._flush_interval_s - age))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._stop.is_set():
                return
            active = self._active
            if active is not None and active.rows and time.monotonic() - active.created >= self._flush_interval_s:
                self._rotate()
            try:
                await self._drain()
                retry = False
            except (OSError, pa.ArrowException) as e:  # storage trouble: keep the segments, retry soon
                log.error("spool %s: writing Parquet failed, will retry: %s", self.spool_dir, e)
                retry = True
            if self._rollups is not None and not retry and self._rollups.due():
                await asyncio.to_thread(self._rollups.run)

    async def _drain(self) -> None:
        """Convert closed segments in order; each is deleted only after its Parquet is durable."""
        async with self._drain_lock:
            while self._closed:
                seg = self._closed[0]
                async with seg.lock:
                    report = await asyncio.to_thread(self._convert, seg)
                self._closed.popleft()
                self.report.add(report)

    def _convert(self, seg: _Segment) -> FlushReport:
        if seg.fd is not None:
            os.fsync(seg.fd)
            os.close(seg.fd)
            seg.fd = None
        if seg.rows == 0 and seg.bytes == 0 and seg.path.stat().st_size == 0:
            seg.path.unlink()
            return FlushReport()
        assert self._lake is not None
        return convert_segment(seg.path, self._lake, self.writer_id)
