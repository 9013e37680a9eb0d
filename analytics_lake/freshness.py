"""How fresh and how healthy the lake is, cheaply: newest event from Parquet footers, spool backlog, compaction record.

Nothing here scans rows: `lake_freshness` runs on every analytics response, `lake_status` behind `opsctl lake status`.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from analytics_lake import rollup
from analytics_lake.catalog import HourPartition, list_hours
from analytics_lake.errors import LakeError, LakeInputError
from analytics_lake.location import Lake, LakeConfig, open_lake
from analytics_lake.spool_files import LOCK_FILE, list_segments, segment_stamp
from analytics_lake.writer import write_bytes_atomic

META_DIR = "_meta"
COMPACTION_RECORD = "compaction.json"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_S3_READERS = 16  # footer reads are one small ranged GET each: latency-bound, so read many at once

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Footer:
    """What a data file's Parquet footer says, without reading its rows."""

    path: str
    rows: int
    newest: datetime | None  # max(ts) from the row-group statistics; None for a file without rows


# -- footers ----------------------------------------------------------------------------------


def read_footer(lake: Lake, path: str) -> Footer:
    """Rows and newest `ts` of one data file from its footer (statistics; the `ts` column only if they are missing).

    Raises:
        FileNotFoundError: the file went away (a compaction finished meanwhile).
        OSError, pa.ArrowException: unreadable or not Parquet.
    """
    meta = pq.read_metadata(path, filesystem=lake.fs)
    column = meta.schema.names.index("ts")
    newest = None
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        if group.num_rows == 0:
            continue
        stats = group.column(column).statistics
        if stats is None or not stats.has_min_max:  # never for our writer; a foreign file: read one column
            newest = pc.max(pq.read_table(path, columns=["ts"], filesystem=lake.fs).column("ts")).as_py()
            break
        newest = stats.max if newest is None else max(newest, stats.max)
    return Footer(path, meta.num_rows, newest.astimezone(UTC) if newest is not None else None)


def _map(lake: Lake, func: Callable[[str], T], paths: list[str]) -> list[T]:
    if lake.is_local or len(paths) < 2:
        return [func(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(_S3_READERS, len(paths)), thread_name_prefix="lake-footer") as pool:
        return list(pool.map(func, paths))


def _relisted(lake: Lake, read: Callable[[list[HourPartition]], T]) -> T:
    """`read(list_hours(lake))`, listed once more if a listed file vanished (compaction deletes its inputs)."""
    try:
        return read(list_hours(lake))
    except FileNotFoundError:
        return read(list_hours(lake))


# -- freshness --------------------------------------------------------------------------------


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise LakeInputError("now must be a timezone-aware datetime")
    return now.astimezone(UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="microseconds")


def _lag(now: datetime, newest: datetime | None) -> float | None:
    # clamped: an event stamped slightly ahead by a gateway's clock is "fresh", not negative lag
    return None if newest is None else max(0.0, (now - newest).total_seconds())


def newest_event(lake: Lake, hours: list[HourPartition]) -> datetime | None:
    """Newest `ts` in the lake: footers of the newest hour partition that holds rows (older ones only if it has none).

    Every file lives in the hour partition of its rows' `ts`, so the newest non-empty hour holds the newest event.
    """
    for part in reversed(hours):
        stamps = [f.newest for f in _map(lake, lambda p: read_footer(lake, p), part.effective_files)
                  if f.newest is not None]
        if stamps:
            return max(stamps)
    return None


def lake_freshness(lake: Lake | LakeConfig, *, now: datetime | None = None) -> dict:
    """How far behind the lake is, lake-wide: cheap enough for every analytics response (listings and the
    footers of the newest hour's files; the row count does not matter). Pass an opened `Lake` to reuse its
    filesystem (an S3 client) across calls.

    Returns:
        {"newest_event": iso|None, "lag_s": float|None (now - newest event), "rollup_lag_s": float|None
        (`rollup.status`: 0 when every closed hour is rolled up), "checked_at": iso}.

    Raises:
        LakeError: the lake cannot be listed or read (e.g. S3 unreachable).
    """
    lake = open_lake(lake)
    moment = _now(now)
    try:
        newest, hours = _relisted(lake, lambda listed: (newest_event(lake, listed), listed))
        rollup_lag = rollup.status(lake, now=moment, hours=hours)["lag_s"]  # one listing of usage/ for both
    except (OSError, pa.ArrowException) as e:
        raise LakeError(f"reading the lake's newest files failed: {e}") from e
    return {
        "newest_event": _iso(newest),
        "lag_s": _lag(moment, newest),
        "rollup_lag_s": rollup_lag,
        "checked_at": _iso(moment),
    }


# -- compaction record ------------------------------------------------------------------------


def _record_path(lake: Lake) -> str:
    return f"{lake.base}/{META_DIR}/{COMPACTION_RECORD}"


def record_compaction(lake: Lake | LakeConfig, report: Mapping, *, now: datetime | None = None) -> dict:
    """Remember the last compaction run in `<lake>/_meta/compaction.json` (written atomically); returns the record.

    `report` is what `compaction.compact` returns (hours_compacted, hours_resumed, files_merged).

    Raises:
        LakeError: the record could not be written.
    """
    lake = open_lake(lake)
    record = {"finished_at": _iso(_now(now)), **report}
    try:
        if lake.is_local:
            os.makedirs(f"{lake.base}/{META_DIR}", exist_ok=True)
        write_bytes_atomic(lake, _record_path(lake), orjson.dumps(record))
    except OSError as e:
        raise LakeError(f"recording the compaction in {_record_path(lake)} failed (the compaction itself is done): "
                        f"{e}") from e
    return record


def read_compaction_record(lake: Lake | LakeConfig) -> dict | None:
    """The last `record_compaction` record, or None if no compaction has been recorded.

    Raises:
        LakeError: the record exists but is unreadable or not a JSON object.
    """
    lake = open_lake(lake)
    path = _record_path(lake)
    try:
        if lake.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with lake.fs.open_input_stream(path) as f:
            record = orjson.loads(f.read())
    except (OSError, orjson.JSONDecodeError) as e:
        raise LakeError(f"compaction record {path} is unreadable: {e}") from e
    if not isinstance(record, dict):
        raise LakeError(f"compaction record {path} is not a JSON object")
    return record


# -- spool backlog ----------------------------------------------------------------------------


def spool_dir_live(spool_dir: Path) -> bool:
    """Whether a live process holds the directory's lock (`spool_files.acquire_lock`).

    Probes with a shared, non-blocking flock released at once, and never creates the lock file:
    a status check must not stand in an owner's way for longer than the probe.
    """
    try:
        fd = os.open(spool_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _segment_sizes(segments: list[Path]) -> list[tuple[Path, int]]:
    sizes = []
    for segment in segments:
        try:
            sizes.append((segment, segment.stat().st_size))
        except FileNotFoundError:  # converted to Parquet and deleted since the listing: no longer a backlog
            continue
    return sizes


def spool_backlog(spool_root: Path, *, now: datetime | None = None) -> list[dict]:
    """Per writer directory under `spool_root`: segments not yet in Parquet, their bytes, the oldest one's age.

    Returns:
        [{"writer", "live", "segments", "bytes", "oldest_segment_age_s" (non-empty segments; None if none),
        "rejected_files"}] sorted by writer; [] when `spool_root` does not exist.

    Raises:
        LakeError: a directory cannot be read (e.g. it belongs to another user).
    """
    if not spool_root.is_dir():
        return []
    now_us = (_now(now) - _EPOCH) // timedelta(microseconds=1)  # exact, like the segment stamps
    out = []
    for spool_dir in sorted(p for p in spool_root.iterdir() if p.is_dir()):
        try:
            segments = _segment_sizes(list_segments(spool_dir))
            rejected = sum(1 for p in spool_dir.iterdir() if p.name.startswith("rejected-"))
            live = spool_dir_live(spool_dir)
        except FileNotFoundError:  # the directory was removed while we looked
            continue
        except OSError as e:
            raise LakeError(f"cannot read spool directory {spool_dir}: {e.strerror}") from e
        stamps = [stamp for seg, size in segments if size and (stamp := segment_stamp(seg.name)) is not None]
        out.append({
            "writer": spool_dir.name,
            "live": live,
            "segments": len(segments),
            "bytes": sum(size for _, size in segments),
            "oldest_segment_age_s": max(0.0, (now_us - min(stamps)) / 1e6) if stamps else None,
            "rejected_files": rejected,
        })
    return out


# -- status -----------------------------------------------------------------------------------


def _hour_name(part: HourPartition) -> str:
    return f"dt={part.dt}/hour={part.hour:02d}"


def _per_day(hours: Iterable[HourPartition], footers: Mapping[str, Footer]) -> list[dict]:
    days: dict[str, dict] = {}
    for part in hours:
        files = part.effective_files
        if not files:
            continue
        day = days.setdefault(part.dt, {"dt": part.dt, "hours": 0, "files": 0, "rows": 0})
        day["hours"] += 1
        day["files"] += len(files)
        day["rows"] += sum(footers[f].rows for f in files if f in footers)  # unreadable: in problems
    return list(days.values())


def _footer_or_problem(lake: Lake, path: str) -> Footer | str:
    try:
        return read_footer(lake, path)
    except FileNotFoundError:
        raise  # not a problem of the file: the listing is stale
    except (OSError, pa.ArrowException) as e:
        return f"{path}: footer unreadable ({e}); run `opsctl lake verify`"


def _read_all_footers(lake: Lake, hours: list[HourPartition]) -> tuple[list[HourPartition], list[Footer | str]]:
    paths = [f for part in hours for f in part.effective_files]
    return hours, _map(lake, lambda p: _footer_or_problem(lake, p), paths)


def lake_status(lake: Lake | LakeConfig, *, spool_root: Path | None, now: datetime | None = None) -> dict:
    """Everything `opsctl lake status` shows, from listings and footers only (no row is read).

    Returns:
        {"lake", "empty", "newest_event", "lag_s", "checked_at", "files", "rows", "days": [{dt, hours, files,
        rows}], "uncompacted_hours", "pending_compactions": ["dt=…/hour=HH"], "last_compaction": record|None,
        "rollup": rollup.status(), "rollup_lag_s", "spool": spool_backlog(), "problems": [str]}.
        Rows are rows stored: duplicates a compaction has not removed yet count twice. A file whose footer
        cannot be read, or an unreadable compaction record, is listed in "problems" instead of failing.

    Raises:
        LakeError: the lake cannot be listed (e.g. S3 unreachable).
    """
    lake = open_lake(lake)
    moment = _now(now)
    try:
        hours, read = _relisted(lake, lambda listed: _read_all_footers(lake, listed))
    except (OSError, pa.ArrowException) as e:
        raise LakeError(f"listing the lake failed: {e}") from e
    footers = {f.path: f for f in read if isinstance(f, Footer)}
    problems = [f for f in read if isinstance(f, str)]
    stamps = [f.newest for f in footers.values() if f.newest is not None]
    newest = max(stamps) if stamps else None
    try:
        last_compaction = read_compaction_record(lake)
    except LakeError as e:
        last_compaction = None
        problems.append(str(e))
    try:
        rollups = rollup.status(lake, now=moment, hours=hours)
    except OSError as e:
        raise LakeError(f"listing the lake's rollups failed: {e}") from e
    return {
        "lake": lake.config.url,
        "empty": not read,
        "newest_event": _iso(newest),
        "lag_s": _lag(moment, newest),
        "checked_at": _iso(moment),
        "files": len(read),
        "rows": sum(f.rows for f in footers.values()),
        "days": _per_day(hours, footers),
        "uncompacted_hours": sum(1 for part in hours if len(part.effective_files) > 1),
        "pending_compactions": [_hour_name(part) for part in hours if part.manifest is not None],
        "last_compaction": last_compaction,
        "rollup": rollups,
        "rollup_lag_s": rollups["lag_s"],
        "spool": spool_backlog(spool_root, now=moment) if spool_root is not None else [],
        "problems": problems,
    }
