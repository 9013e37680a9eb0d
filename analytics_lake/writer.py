"""Usage events → Arrow tables → zstd Parquet files, one per hour partition, written atomically.

Both sinks and compaction write through here, so the layout, schema version and row groups are uniform.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from analytics_lake.errors import LakeInputError
from analytics_lake.location import (
    Lake,
    LakeConfig,
    check_name_part,
    hour_of,
    open_lake,
    part_name,
)
from analytics_lake.schema import USAGE_FIELDS, USAGE_SCHEMA

ROW_GROUP_SIZE = 1_000_000
HOUR_US = 3_600_000_000
_FIELD_SET = frozenset(USAGE_FIELDS)
_NOT_NULL = tuple(f.name for f in USAGE_SCHEMA if not f.nullable)
# what the JSON reader parses: ints stay ints (ts is µs since the epoch), cast to USAGE_SCHEMA after
_JSON_SCHEMA = pa.schema(
    [pa.field(f.name, pa.int64() if f.name in ("ts", "status") else f.type) for f in USAGE_SCHEMA]
)


@dataclass(slots=True)
class ParsedRows:
    """The table built from ndjson bytes plus what could not be used (counted, never silently dropped)."""

    table: pa.Table
    partial_tail: bytes  # bytes after the last newline (a write cut short by a crash)
    rejected: list[bytes]  # complete lines that are not a valid usage event


def check_event(event: Mapping) -> None:
    """Cheap shape check for the hot path: exactly the schema's keys."""
    if event.keys() != _FIELD_SET:
        missing = sorted(_FIELD_SET - event.keys())
        extra = sorted(set(event.keys()) - _FIELD_SET)
        raise LakeInputError(f"usage event has missing keys {missing} / unknown keys {extra}")


def _validate(table: pa.Table) -> pa.Table:
    for name in _NOT_NULL:
        if table.column(name).null_count:
            raise LakeInputError(f"usage column {name!r} must not be null")
    return table


def events_to_table(events: Sequence[Mapping]) -> pa.Table:
    """Build the Arrow table column by column (no per-row objects).

    Raises:
        LakeInputError: a key is missing/unknown, a value has the wrong type, or a required value is null.
    """
    try:
        arrays = [pa.array([e[f.name] for e in events], type=f.type) for f in USAGE_SCHEMA]
    except KeyError as e:
        raise LakeInputError(f"usage event is missing key {e.args[0]!r}") from e
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as e:
        raise LakeInputError(f"usage event has a value of the wrong type: {e}") from e
    for event in events:
        if len(event) != len(USAGE_FIELDS):
            check_event(event)
    return _validate(pa.Table.from_arrays(arrays, schema=USAGE_SCHEMA))


def _json_block_to_table(data: bytes) -> pa.Table:
    table = pajson.read_json(
        io.BytesIO(data),
        read_options=pajson.ReadOptions(block_size=max(1 << 20, min(len(data) + 1, 64 << 20))),
        parse_options=pajson.ParseOptions(explicit_schema=_JSON_SCHEMA, unexpected_field_behavior="error"),
    )
    return _validate(table.select(USAGE_FIELDS).cast(USAGE_SCHEMA))


def ndjson_to_table(data: bytes) -> ParsedRows:
    """Parse newline-delimited JSON events; fast path is Arrow's multithreaded JSON reader.

    A partial last line is returned apart; if the fast path fails, lines are checked one by one
    so a single bad line cannot block the rest.
    """
    end = data.rfind(b"\n") + 1
    body, tail = data[:end], data[end:]
    if not body.strip():
        return ParsedRows(USAGE_SCHEMA.empty_table(), tail, [])
    try:
        return ParsedRows(_json_block_to_table(body), tail, [])
    except (pa.ArrowTypeError, ValueError):  # ArrowInvalid and LakeInputError are ValueErrors
        pass  # fall through to the careful path, which reports the bad lines
    good: list[dict] = []
    rejected: list[bytes] = []
    for line in body.split(b"\n"):
        if not line.strip():
            continue
        try:
            event = orjson.loads(line)
            if not isinstance(event, dict):
                raise LakeInputError("not an object")
            check_event(event)
            events_to_table([event])
        except (orjson.JSONDecodeError, LakeInputError):  # JSONDecodeError is a ValueError too
            rejected.append(line)
            continue
        good.append(event)
    table = events_to_table(good) if good else USAGE_SCHEMA.empty_table()
    return ParsedRows(table, tail, rejected)


_DUCK_TYPES = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.bool_(): "BOOLEAN", pa.float64(): "DOUBLE"}
_DUCK_COLUMNS = "{" + ", ".join(f"'{f.name}': '{_DUCK_TYPES[f.type]}'" for f in _JSON_SCHEMA) + "}"


def ndjson_file_to_table(path: str) -> ParsedRows:
    """Parse a spool segment file; fast path is DuckDB's parallel JSON reader (~2x Arrow's here).

    Files with a partial last line or a bad line go through `ndjson_to_table`, which reports them.
    """
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return ParsedRows(USAGE_SCHEMA.empty_table(), b"", [])
        f.seek(size - 1)
        complete = f.read(1) == b"\n"
    if complete:
        con = duckdb.connect()
        try:
            table = con.sql(
                f"SELECT * FROM read_json(?, format='newline_delimited', columns={_DUCK_COLUMNS})", params=[path]
            ).to_arrow_table()
            return ParsedRows(_validate(table.select(USAGE_FIELDS).cast(USAGE_SCHEMA)), b"", [])
        except (duckdb.Error, ValueError):  # ArrowInvalid and LakeInputError are ValueErrors
            pass  # the careful path below finds and reports the bad lines
        finally:
            con.close()
    with open(path, "rb") as f:
        return ndjson_to_table(f.read())


def write_parquet_atomic(lake: Lake, path: str, table: pa.Table, *, metadata: Mapping[bytes, bytes] | None = None) -> None:
    """Write `table` so that readers see either nothing or the whole, durable file.

    Local: temp name in the same directory, fsync, rename, fsync the directory.
    S3: serialize in memory, then one output stream (the object appears only when complete).
    `metadata` is the file's schema metadata (default: the usage schema's, with its version).
    """
    table = table.replace_schema_metadata(USAGE_SCHEMA.metadata if metadata is None else metadata)
    if lake.is_local:
        directory, name = path.rsplit("/", 1)
        os.makedirs(directory, exist_ok=True)
        tmp = f"{directory}/.tmp-{uuid.uuid4().hex}-{name}"
        try:
            with open(tmp, "wb") as f:
                pq.write_table(table, f, compression="zstd", row_group_size=ROW_GROUP_SIZE)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        fsync_dir(directory)
        return
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP_SIZE)
    with lake.fs.open_output_stream(path) as out:
        out.write(sink.getvalue())


def write_bytes_atomic(lake: Lake, path: str, data: bytes) -> None:
    """Small files (manifests): same all-or-nothing rule as `write_parquet_atomic`."""
    if lake.is_local:
        directory, name = path.rsplit("/", 1)
        tmp = f"{directory}/.tmp-{uuid.uuid4().hex}-{name}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(directory)
        return
    with lake.fs.open_output_stream(path) as out:
        out.write(data)


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def split_by_hour(table: pa.Table) -> Iterable[tuple[str, int, pa.Table]]:
    """Yield (dt, hour, rows) per UTC hour present in `table`."""
    if table.num_rows == 0:
        return
    keys = pc.divide(table.column("ts").cast(pa.int64()), HOUR_US)
    lo, hi = pc.min(keys).as_py(), pc.max(keys).as_py()
    if lo == hi:
        yield (*hour_of(lo), table)
        return
    for key in pc.unique(keys).to_pylist():
        dt, hour = hour_of(key)
        yield dt, hour, table.filter(pc.equal(keys, key))


def new_seq() -> str:
    """A sortable, practically unique sequence for file names: microseconds since the epoch."""
    return f"{time.time_ns() // 1000:016d}"


def write_table(lake: Lake | LakeConfig, table: pa.Table, *, writer_id: str, seq: str | None = None) -> list[str]:
    """Write one Parquet file per hour in `table`; returns the paths written.

    The same (writer_id, seq) always yields the same file names, so re-writing a batch after a
    crash overwrites instead of duplicating.
    """
    lake = open_lake(lake)
    check_name_part(writer_id, "writer id")
    seq = check_name_part(seq or new_seq(), "sequence")
    paths = []
    for dt, hour, rows in split_by_hour(table):
        path = f"{lake.hour_dir(dt, hour)}/{part_name(writer_id, seq)}"
        write_parquet_atomic(lake, path, rows)
        paths.append(path)
    return paths


def write_batch(
    lake: Lake | LakeConfig, events: Sequence[Mapping], *, writer_id: str = "batch", seq: str | None = None
) -> list[str]:
    """Write usage event dicts to the lake, grouped by dt/hour; returns the paths written.

    Raises:
        LakeInputError: an event does not match the schema.
    """
    if not events:
        return []
    return write_table(lake, events_to_table(events), writer_id=writer_id, seq=seq)
