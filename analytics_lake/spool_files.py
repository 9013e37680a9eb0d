"""Spool segment files on local disk: naming, the owner's lock, and segment → Parquet conversion.

Shared by `SpoolSink` (the live writer) and `opsctl lake flush` (leftovers of dead writers).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from analytics_lake.errors import LakeInputError, SpoolLocked
from analytics_lake.location import Lake, LakeConfig, check_name_part, open_lake
from analytics_lake.writer import fsync_dir, ndjson_file_to_table, write_table

log = logging.getLogger(__name__)

LOCK_FILE = "lock"
_SEGMENT = re.compile(r"^seg-(\d{16})\.ndjson$")


@dataclass(slots=True)
class FlushReport:
    """What converting segments did; counts are cumulative over the segments handled."""

    segments: int = 0
    rows: int = 0
    files: list[str] = field(default_factory=list)
    partial_lines: int = 0  # a line cut short by a crash (never acknowledged: emit had not returned)
    rejected_rows: int = 0  # complete lines that are not valid events, kept in rejected-*.ndjson
    skipped_dirs: list[str] = field(default_factory=list)  # owned by a live process

    def add(self, other: FlushReport) -> None:
        self.segments += other.segments
        self.rows += other.rows
        self.files.extend(other.files)
        self.partial_lines += other.partial_lines
        self.rejected_rows += other.rejected_rows
        self.skipped_dirs.extend(other.skipped_dirs)

    def as_dict(self) -> dict:
        return {
            "segments": self.segments, "rows": self.rows, "files": len(self.files),
            "partial_lines": self.partial_lines, "rejected_rows": self.rejected_rows,
            "skipped_dirs": self.skipped_dirs,
        }


def segment_name(stamp: int) -> str:
    return f"seg-{stamp:016d}.ndjson"


def segment_stamp(name: str) -> int | None:
    m = _SEGMENT.match(name)
    return int(m.group(1)) if m else None


def list_segments(spool_dir: Path) -> list[Path]:
    """Segments in write order (their stamps increase)."""
    found = [(s, p) for p in spool_dir.iterdir() if (s := segment_stamp(p.name)) is not None]
    return [p for _, p in sorted(found)]


def acquire_lock(spool_dir: Path) -> int:
    """Take the directory's exclusive flock (released by the kernel if the process dies).

    Raises:
        SpoolLocked: a live process holds it.
    """
    spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(spool_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        os.close(fd)
        raise SpoolLocked(f"spool directory {spool_dir} is in use by a running process") from e
    return fd


def release_lock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def remove_segment(segment: Path) -> None:
    """Delete a converted segment durably (its Parquet files are already durable)."""
    segment.unlink()
    fsync_dir(str(segment.parent))


def convert_segment(segment: Path, lake: Lake, writer_id: str,
                    remove: Callable[[Path], object] = remove_segment) -> FlushReport:
    """Write one closed segment to Parquet, then delete it (only after the Parquet files are durable).

    File names are `part-<writer_id>-<segment stamp>`, so converting the same segment again after
    a crash overwrites its files instead of duplicating rows.
    """
    stamp = segment_stamp(segment.name)
    if stamp is None:
        raise LakeInputError(f"{segment} is not a spool segment")
    parsed = ndjson_file_to_table(str(segment))
    report = FlushReport(segments=1, rows=parsed.table.num_rows)
    if parsed.partial_tail:
        report.partial_lines = 1
        log.warning("spool segment %s ends with a partial line (%d bytes): dropped, it was never acknowledged",
                    segment.name, len(parsed.partial_tail))
    if parsed.rejected:
        report.rejected_rows = len(parsed.rejected)
        rejected = segment.with_name(f"rejected-{stamp:016d}.ndjson")
        with open(rejected, "wb") as f:
            f.write(b"\n".join(parsed.rejected) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        log.error("spool segment %s had %d invalid lines, kept in %s", segment.name, len(parsed.rejected), rejected)
    report.files = write_table(lake, parsed.table, writer_id=writer_id, seq=f"{stamp:016d}")
    remove(segment)
    return report


def flush_spool_dir(spool_dir: Path, lake: Lake | LakeConfig, writer_id: str | None = None) -> FlushReport:
    """Convert every segment of a spool directory whose owner is not running.

    Raises:
        SpoolLocked: the directory's owner is alive.
    """
    lake = open_lake(lake)
    writer_id = check_name_part(writer_id or spool_dir.name, "writer id")
    fd = acquire_lock(spool_dir)
    try:
        report = FlushReport()
        # Deleting a large segment costs as much as parsing one on some filesystems: do it in a
        # second thread while the next segment converts (a crash in between only means the
        # segment is converted again, onto the same file names).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool-unlink") as deleter:
            removals = []
            for segment in list_segments(spool_dir):
                report.add(convert_segment(segment, lake, writer_id,
                                           remove=lambda seg: removals.append(deleter.submit(remove_segment, seg))))
            for removal in removals:
                removal.result()
        return report
    finally:
        release_lock(fd)


def flush_spool_tree(spool_root: Path, lake: Lake | LakeConfig) -> FlushReport:
    """`<state>/spool/<writer_id>/` for every writer: flush the dead ones, skip (and list) live ones."""
    report = FlushReport()
    if not spool_root.is_dir():
        return report
    lake = open_lake(lake)
    for child in sorted(p for p in spool_root.iterdir() if p.is_dir()):
        try:
            report.add(flush_spool_dir(child, lake))
        except SpoolLocked:
            report.skipped_dirs.append(child.name)
    return report
