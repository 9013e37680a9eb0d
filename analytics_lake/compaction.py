"""Compaction merges the small files of each hour into one (deduplicated by request_id) and verify checks the lake.

Crash-safe by a per-hour manifest written first; see `compact_hour` for the protocol.
"""

from __future__ import annotations

import logging
from datetime import date

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from analytics_lake import rollup
from analytics_lake.catalog import MANIFEST, HourPartition, list_hours
from analytics_lake.errors import LakeError
from analytics_lake.freshness import record_compaction
from analytics_lake.location import Lake, LakeConfig, open_lake, part_name
from analytics_lake.schema import SCHEMA_VERSION, USAGE_SCHEMA
from analytics_lake.writer import new_seq, write_bytes_atomic, write_parquet_atomic

log = logging.getLogger(__name__)

_VERSION_KEY = b"fleetgate.schema_version"


def _exists(lake: Lake, path: str) -> bool:
    return lake.fs.get_file_info(path).type == pafs.FileType.File


def dedup(table: pa.Table) -> pa.Table:
    """Keep the first row of each request_id, ordered by ts (good for compression and ts filters)."""
    if table.num_rows == 0:
        return table
    indexed = table.append_column("_i", pa.array(range(table.num_rows), pa.int64()))
    first = indexed.group_by("request_id", use_threads=False).aggregate([("_i", "min")])
    keep = pc.sort_indices(first.column("_i_min"))
    rows = table.take(pc.take(first.column("_i_min"), keep))
    return rows.take(pc.sort_indices(rows, sort_keys=[("ts", "ascending")]))


def begin_hour(lake: Lake, part: HourPartition) -> dict:
    """Phase 1: record the plan, then write the merged output (readers ignore inputs once it exists)."""
    manifest = {"output": part_name("compact", new_seq()), "inputs": list(part.files)}
    write_bytes_atomic(lake, f"{part.path}/{MANIFEST}", orjson.dumps(manifest))
    tables = [pq.read_table(f"{part.path}/{n}", filesystem=lake.fs, schema=USAGE_SCHEMA) for n in part.files]
    merged = dedup(pa.concat_tables(tables))
    write_parquet_atomic(lake, f"{part.path}/{manifest['output']}", merged)
    return manifest


def finish_hour(lake: Lake, part: HourPartition, manifest: dict) -> None:
    """Phase 2: delete the inputs, then the manifest. Safe to repeat."""
    for name in manifest["inputs"]:
        path = f"{part.path}/{name}"
        if name != manifest["output"] and _exists(lake, path):
            lake.fs.delete_file(path)
    lake.fs.delete_file(f"{part.path}/{MANIFEST}")


def compact_hour(lake: Lake, part: HourPartition) -> dict | None:
    """Merge one hour's files into one; resume an interrupted merge first.

    Protocol: (1) manifest {output, inputs}; (2) merged output written atomically; (3) inputs
    deleted; (4) manifest deleted. A crash before (2) completes leaves a manifest whose output
    does not exist: it is discarded and the merge redone. A crash after (2) is finished by (3)+(4).
    Readers (catalog.effective_files) skip the inputs named in a manifest whose output exists.
    """
    if part.manifest is not None:
        if part.manifest["output"] in part.files:
            finish_hour(lake, part, part.manifest)
            log.info("compaction of %s finished after an interruption", part.path)
            return {"dt": part.dt, "hour": part.hour, "resumed": True, "inputs": len(part.manifest["inputs"])}
        lake.fs.delete_file(f"{part.path}/{MANIFEST}")
        part.manifest = None
    if len(part.files) <= 1:
        return None
    manifest = begin_hour(lake, part)
    finish_hour(lake, part, manifest)
    return {"dt": part.dt, "hour": part.hour, "resumed": False, "inputs": len(manifest["inputs"])}


def compact(lake: Lake | LakeConfig, before: date | None = None, *, rollups: bool = True) -> dict:
    """Compact every hour (with dt < `before`, when given) that has more than one file, then (with `rollups`)
    rebuild the rollups the merge made stale.

    Returns a report: hours compacted, files merged, interrupted compactions finished, rollup hours built;
    the same report, with the time, is recorded in `<lake>/_meta/compaction.json` (`freshness.record_compaction`).
    """
    lake = open_lake(lake)
    done = []
    for part in list_hours(lake):
        if before is not None and date.fromisoformat(part.dt) >= before:
            continue
        try:
            result = compact_hour(lake, part)
        except (OSError, pa.ArrowException) as e:  # e.g. a file with a foreign schema: leave the hour as is
            raise LakeError(f"compacting {part.path} failed (safe to rerun): {e}") from e
        if result:
            done.append(result)
    report = {
        "hours_compacted": sum(1 for d in done if not d["resumed"]),
        "hours_resumed": sum(1 for d in done if d["resumed"]),
        "files_merged": sum(d["inputs"] for d in done),
    }
    if rollups:
        report["rollup_hours_built"] = rollup.update(lake, _wait=True)["hours_built"]
    record_compaction(lake, report)  # what `opsctl lake status` shows as the last compaction
    return report


def verify(lake: Lake | LakeConfig) -> dict:
    """Check every file's schema, count rows per hour and duplicate request_ids; `ok` if all is well."""
    lake = open_lake(lake)
    schema_errors: list[str] = []
    per_hour = []
    files: list[str] = []
    pending = []
    for part in list_hours(lake):
        rows = 0
        for path in part.effective_files:
            try:
                meta = pq.read_metadata(path, filesystem=lake.fs)
            except (OSError, pa.ArrowException) as e:
                schema_errors.append(f"{path}: not readable as Parquet: {e}")
                continue
            schema = meta.schema.to_arrow_schema()
            version = (meta.metadata or {}).get(_VERSION_KEY)
            if not schema.remove_metadata().equals(USAGE_SCHEMA.remove_metadata()):
                schema_errors.append(f"{path}: schema differs from the usage schema")
            if version != str(SCHEMA_VERSION).encode():
                schema_errors.append(f"{path}: schema version {version!r}, expected {SCHEMA_VERSION}")
            rows += meta.num_rows
            files.append(path)
        if part.manifest is not None:
            pending.append(f"dt={part.dt}/hour={part.hour:02d}")
        per_hour.append({"dt": part.dt, "hour": part.hour, "files": len(part.effective_files), "rows": rows})
    duplicates = 0
    if files:
        dataset = ds.dataset(files, filesystem=lake.fs, format="parquet", schema=USAGE_SCHEMA)
        con = duckdb.connect()
        try:
            con.register("ids", dataset.scanner(columns=["request_id"]).to_reader())
            duplicates = con.sql("SELECT count(*) - count(DISTINCT request_id) FROM ids").fetchall()[0][0]
        finally:
            con.close()
    total = sum(h["rows"] for h in per_hour)
    return {
        "ok": not schema_errors and duplicates == 0,
        "files": len(files),
        "rows": total,
        "hours": len(per_hour),
        "duplicate_request_ids": int(duplicates),
        "schema_errors": schema_errors,
        "pending_compactions": pending,
        "per_hour": per_hour,
    }
