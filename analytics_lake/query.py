"""DuckDB over the lake: the `usage` view, canned reports (spend, latency, errors, exports) and guarded SQL.

Local lakes are read with DuckDB's Parquet reader; S3 lakes through a pyarrow dataset (no httpfs here).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from analytics_lake import rollup
from analytics_lake.errors import LakeError, LakeInputError
from analytics_lake.location import Lake, LakeConfig, open_lake
from analytics_lake.report_args import (
    DIMENSIONS,
    ERRORS_BY,
    LATENCY_BY,
    SPEND_BY,
    by_names,
    check_range,
    month_range,
    resolve_by,
    since_bound,
    until_bound,
)
from analytics_lake.rollup_query import ANALYTICS_DIMENSIONS, RollupReports
from analytics_lake.schema import USAGE_SCHEMA
from analytics_lake.sql_guard import check_read_only

# report dimensions the rollups have: reports grouped only by these read rollups for whole hours
_ROLLUP_BY = frozenset({"org", "key", "model", "day", "environment", "release"})
_PARTITIONS = pa.schema([("dt", pa.date32()), ("hour", pa.int32())])
_COST = "CAST(sum(cost_micros) AS DECIMAL(38,0)) * CAST(0.000001 AS DECIMAL(7,6))"


class LakeQuery(RollupReports):
    """Read-only DuckDB session over the lake (not thread-safe: one per thread).

    Args:
        config: the lake.
        org: if given, the `usage` view itself only contains this org's rows (for org-scoped callers).
        max_age_s: re-list the lake's files when the snapshot is older than this.
        threads: DuckDB worker threads (default: all cores).
    """

    def __init__(self, config: LakeConfig | Lake, *, org: str | None = None, max_age_s: float = 2.0,
                 threads: int | None = None) -> None:
        self.lake = open_lake(config)
        self.org = org
        self._max_age_s = max_age_s
        self._threads = threads
        self._con: duckdb.DuckDBPyConnection | None = None
        self._listed_at = 0.0
        self.files: list[str] = []
        self.rolled_hours = 0
        self._scope = ""
        self._rolled_raw: dict[tuple[str, int], list[str]] = {}
        self._packed_hours: dict[str, dict[str, list[str]]] = {}
        self._file_sources: dict[tuple[str, ...], str] = {}

    # -- connection -----------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-list the lake and rebuild the views: `usage` (new files, finished compactions) and the rollup
        sources the reports read (see analytics_lake.rollup_query)."""
        if self._con is not None:
            self._con.close()
            self._con = None
        current = rollup.state(self.lake)
        self.files = [f for part in current.hours for f in part.effective_files]
        self.rolled_hours = len(current.rolled)
        self._rolled_raw = {(part.dt, part.hour): part.effective_files for part in current.hours
                            if (part.dt, part.hour) in current.rolled}
        self._packed_hours = {cube: {} for cube in rollup.CUBES}
        for (dt, _), files in current.rolled.items():
            if dt in current.packed:
                for cube, path in files.items():
                    self._packed_hours[cube].setdefault(dt, []).append(path)
        self._file_sources = {}
        unrolled_files = [f for part in current.hours if (part.dt, part.hour) not in current.rolled
                          for f in part.effective_files]
        con = duckdb.connect(config={"threads": self._threads} if self._threads else {})
        con.execute("SET TimeZone = 'UTC'").fetchall()
        scope = ""
        if self.org is not None:
            scope = " WHERE org_id = " + "'" + self.org.replace("'", "''") + "'"
        self._raw_view(con, "usage", self.files, scope)
        self._raw_view(con, "_raw_unrolled", unrolled_files, scope)
        for cube, dims in rollup.CUBES.items():
            if "org_id" not in dims and self.org is not None:
                continue  # an org-scoped session reads only cubes it can filter to its org
            unpacked = [files[cube] for (dt, _), files in current.rolled.items() if dt not in current.packed]
            packed = [files[cube] for (dt, _), files in current.rolled.items() if dt in current.packed]
            self._rollup_view(con, f"_roll_{cube}", dims, unpacked, scope)
            self._rollup_view(con, f"_roll_{cube}_day", dims, [files[cube] for files in current.packed.values()],
                              scope)
            self._rollup_view(con, f"_roll_{cube}_packed", dims, packed, scope, hive=f"{rollup.rollup_root(self.lake)}/{cube}")
        if self.lake.is_local:
            allowed = [self.lake.usage_root, rollup.rollup_root(self.lake)]
            con.execute("SET allowed_directories=[" + ", ".join("'" + d.replace("'", "''") + "/'" for d in allowed)
                        + "]").fetchall()
        con.execute("SET parquet_metadata_cache=true").fetchall()
        con.execute("SET python_enable_replacements=false").fetchall()
        con.execute("SET enable_external_access=false").fetchall()
        con.execute("SET lock_configuration=true").fetchall()
        self._con = con
        self._scope = scope
        self._listed_at = time.monotonic()

    def _fresh(self) -> None:
        """Refresh if the listing is older than max_age_s (reports plan from it, then query)."""
        if self._con is None or time.monotonic() - self._listed_at > self._max_age_s:
            self.refresh()

    def _files_source(self, files: list[str], hive_base: str) -> str:
        """A relation over these files by name (`hive_base`: their partition root under the lake, e.g. "usage"),
        for the few hours at a range's edges: cheaper than pruning a view over every file of the lake."""
        assert self._con is not None
        if self.lake.is_local:
            listed = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
            return (f"(SELECT * FROM read_parquet({listed}, hive_partitioning=true, "
                    f"hive_types={{'dt': DATE, 'hour': INTEGER}}){self._scope})")
        key = tuple(files)
        name = self._file_sources.get(key)
        if name is None:
            name = self._file_sources[key] = f"_files_{len(self._file_sources)}"
            schema = pa.schema([*USAGE_SCHEMA, *_PARTITIONS]) if hive_base == "usage" else None
            self._con.register(name, ds.dataset(
                files, filesystem=self.lake.fs, format="parquet", schema=schema,
                partitioning=ds.partitioning(_PARTITIONS, flavor="hive"),
                partition_base_dir=f"{self.lake.base}/{hive_base}"))
        return f"(SELECT * FROM {name}{self._scope})"

    def _raw_view(self, con: duckdb.DuckDBPyConnection, name: str, files: list[str], scope: str) -> None:
        """A view of the usage columns plus the hive partition columns dt and hour over `files`."""
        if not files:
            con.register(f"{name}_source", pa.schema([*USAGE_SCHEMA, *_PARTITIONS]).empty_table())
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM {name}_source{scope}").fetchall()
        elif self.lake.is_local:
            listed = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
            con.execute(
                f"CREATE VIEW {name} AS SELECT * FROM read_parquet({listed}, hive_partitioning=true, "
                f"hive_types={{'dt': DATE, 'hour': INTEGER}}){scope}"
            ).fetchall()
        else:
            dataset = ds.dataset(
                files, filesystem=self.lake.fs, format="parquet", schema=pa.schema([*USAGE_SCHEMA, *_PARTITIONS]),
                partitioning=ds.partitioning(_PARTITIONS, flavor="hive"), partition_base_dir=self.lake.usage_root,
            )
            con.register(f"{name}_source", dataset)
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM {name}_source{scope}").fetchall()

    def _rollup_view(self, con: duckdb.DuckDBPyConnection, name: str, dims: tuple[str, ...], files: list[str],
                     scope: str, hive: str | None = None) -> None:
        """A view of rollup rows over `files`; with `hive` (the cube's directory) it also has the partition
        columns dt and hour, so a filter on dt skips files unopened."""
        if not files:
            columns = ", ".join([
                "CAST(NULL AS TIMESTAMPTZ) AS hour_start", "CAST(NULL AS DATE) AS day",
                *(f"CAST(NULL AS VARCHAR) AS {d}" for d in dims),
                *(f"CAST(NULL AS BIGINT) AS {m}" for m in ("requests", "prompt_tokens", "completion_tokens",
                                                            "cost_micros")),
                "CAST(NULL AS DOUBLE) AS latency_ms_sum",
                "CAST(NULL AS STRUCT(b SMALLINT, n BIGINT)[]) AS latency_sketch",
                "CAST(NULL AS STRUCT(b SMALLINT, n BIGINT)[]) AS ttft_sketch",
                *(["CAST(NULL AS DATE) AS dt", "CAST(NULL AS INTEGER) AS hour"] if hive else [])])
            con.execute(f"CREATE VIEW {name} AS SELECT {columns} WHERE false").fetchall()
        elif self.lake.is_local:
            listed = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
            options = ", hive_partitioning=true, hive_types={'dt': DATE, 'hour': INTEGER}" if hive else \
                ", hive_partitioning=false"
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({listed}{options}){scope}").fetchall()
        else:
            partitioning = {}
            if hive:
                partitioning = {"partitioning": ds.partitioning(_PARTITIONS, flavor="hive"), "partition_base_dir": hive}
            con.register(f"{name}_source", ds.dataset(files, filesystem=self.lake.fs, format="parquet", **partitioning))
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM {name}_source{scope}").fetchall()

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> LakeQuery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, sql: str, params: Sequence[object] = ()) -> pa.Table:
        if self._con is None or time.monotonic() - self._listed_at > self._max_age_s:
            self.refresh()
        for attempt in (1, 2):
            assert self._con is not None
            try:
                return self._con.sql(sql, params=list(params) or None).to_arrow_table()
            except duckdb.IOException as e:  # a file went away (compaction): list again, once
                if attempt == 2:
                    raise LakeError(f"reading the lake failed: {str(e).splitlines()[0]}") from e
                self.refresh()
            except (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException,
                    duckdb.ConversionException, duckdb.InvalidInputException) as e:
                raise LakeInputError(f"query failed: {str(e).splitlines()[0]}") from e
            except duckdb.Error as e:
                raise LakeError(f"query failed: {str(e).splitlines()[0]}") from e
        raise AssertionError("unreachable")

    # -- ad-hoc SQL -----------------------------------------------------------------------

    def sql(self, query: str) -> pa.Table:
        """Run one read-only query over the `usage` view.

        Raises:
            QueryRefused: not a single SELECT/WITH/EXPLAIN/DESCRIBE/SUMMARIZE over `usage`.
            LakeInputError: the query is invalid (syntax, unknown column, ...).
        """
        if self._con is None or time.monotonic() - self._listed_at > self._max_age_s:
            self.refresh()
        return self._run(check_read_only(query, con=self._con))  # parsed on the session: no new connection

    # -- reports --------------------------------------------------------------------------

    @staticmethod
    def _where(since: datetime | timedelta | str | None, org: str | None,
               extra: str = "", until: datetime | timedelta | str | None = None) -> tuple[str, list[object]]:
        clauses, params = [], []
        bound, end = since_bound(since), until_bound(until)
        check_range(bound, end)
        if bound is not None:
            clauses += ["dt >= CAST(? AS DATE)", "ts >= ?"]
            params += [bound.date().isoformat(), bound]
        if end is not None:  # dt <= end's date prunes later partitions; ts < end is the exact, exclusive bound
            clauses += ["dt <= CAST(? AS DATE)", "ts < ?"]
            params += [end.date().isoformat(), end]
        if org is not None:
            clauses.append("org_id = ?")
            params.append(org)
        if extra:
            clauses.append(extra)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def spent_micros(self, org_id: str, *, key_id: str | None = None, since: datetime | None = None) -> int:
        """Exact spend (micro-USD) of an org (or one key) since `since`, each request_id counted once.

        Used to rebuild budget counters after Redis lost its data.
        """
        where, params = self._where(since, org_id, "key_id = ?" if key_id else "")
        if key_id:
            params.append(key_id)
        table = self._run(
            "SELECT CAST(coalesce(sum(cost), 0) AS BIGINT) AS spent FROM "
            f"(SELECT any_value(cost_micros) AS cost FROM usage{where} GROUP BY request_id)", params)
        return int(table.column("spent")[0].as_py())

    def spend_windows(self, windows: Sequence[tuple[str, str | None, int | None, int]], *,
                      timeout_s: float | None = None) -> list[int]:
        """Exact spend (micro-USD) per window, all in one grouped query; each request_id counted once.

        A window `(org_id, key_id, start_us, cut_us)` sums the requests of `org_id` (of `key_id`
        only, unless None) that started at or after `start_us` (None: any time) and ended
        (ts + latency_ms) before `cut_us`, both epoch µs. Budget counters take their spend from
        here after a restart or a Redis data loss (gateway/limits/restore.py).

        Raises:
            LakeError: the lake cannot be read, or the query ran longer than `timeout_s`.
        """
        if not windows:
            return []
        orgs = sorted({w[0] for w in windows})
        where = ["cost_micros <> 0", f"org_id IN ({', '.join('?' * len(orgs))})", "dt <= CAST(? AS DATE)"]
        params: list[object] = [*orgs, _utc_date(max(w[3] for w in windows))]
        if all(w[2] is not None for w in windows):
            where.append("dt >= CAST(? AS DATE)")  # partition pruning: only the periods' days
            params.append(_utc_date(min(w[2] for w in windows)))  # type: ignore[type-var]  # all set here
        values = ", ".join(["(?::INTEGER, ?::VARCHAR, ?::VARCHAR, ?::BIGINT, ?::BIGINT)"] * len(windows))
        sql = (
            f"WITH w(i, org_id, key_id, start_us, cut_us) AS (VALUES {values}), "
            "u AS (SELECT any_value(org_id) AS org_id, any_value(key_id) AS key_id, any_value(cost_micros) AS cost, "
            "any_value(epoch_us(ts)) AS start_us, "
            "any_value(epoch_us(ts) + CAST(round(latency_ms * 1000) AS BIGINT)) AS end_us "
            f"FROM usage WHERE {' AND '.join(where)} GROUP BY request_id) "
            "SELECT w.i, CAST(coalesce(sum(u.cost), 0) AS BIGINT) AS spent FROM w LEFT JOIN u "
            "ON u.org_id = w.org_id AND (w.key_id IS NULL OR u.key_id = w.key_id) "
            "AND (w.start_us IS NULL OR u.start_us >= w.start_us) AND u.end_us < w.cut_us "
            "GROUP BY w.i ORDER BY w.i"
        )
        window_params = [v for i, (org, key, start, cut) in enumerate(windows) for v in (i, org, key, start, cut)]
        with self._deadline(timeout_s) as expired:
            try:
                table = self._run(sql, [*window_params, *params])
            except LakeError as e:
                if expired.is_set():
                    raise LakeError(f"the spend query took longer than {timeout_s:g}s and was stopped") from e
                raise
        return [int(v) for v in table.column("spent").to_pylist()]

    @contextlib.contextmanager
    def _deadline(self, timeout_s: float | None) -> Iterator[threading.Event]:
        """Interrupt the running query after `timeout_s` (the event says it happened)."""
        expired = threading.Event()
        if timeout_s is None:
            yield expired
            return

        def interrupt() -> None:
            expired.set()
            if self._con is not None:
                self._con.interrupt()

        timer = threading.Timer(timeout_s, interrupt)
        timer.daemon = True
        timer.start()
        try:
            yield expired
        finally:
            timer.cancel()

    def spend(self, by: str | Sequence[str] = "org", *, since: datetime | timedelta | str | None = None,
              org: str | None = None, until: datetime | timedelta | str | None = None) -> pa.Table:
        """Requests, tokens and cost (exact, DECIMAL USD) grouped by org|key|model|day (or several).

        `since` is inclusive, `until` exclusive (a bare date as `until` includes that whole day).
        """
        cols = resolve_by(by, SPEND_BY)
        names = by_names(by)
        if set(names) <= _ROLLUP_BY:  # whole hours from rollups: the same exact sums, in milliseconds
            table = self.usage(names, since=since, until=until, org=org)
            return table.select([*(ANALYTICS_DIMENSIONS[n] for n in names), "requests", "prompt_tokens",
                                 "completion_tokens", "cost_usd"])
        where, params = self._where(since, org, until=until)
        return self._run(
            f"SELECT {cols}, count(*) AS requests, CAST(sum(prompt_tokens) AS BIGINT) AS prompt_tokens, "
            f"CAST(sum(completion_tokens) AS BIGINT) AS completion_tokens, {_COST} AS cost_usd "
            f"FROM usage{where} GROUP BY ALL ORDER BY ALL", params)

    def latency(self, by: str | Sequence[str] = "model", *, since: datetime | timedelta | str | None = None,
                org: str | None = None, percentiles: Sequence[float] = (0.5, 0.95, 0.99),
                ttft: bool = True, until: datetime | timedelta | str | None = None, exact: bool = False) -> pa.Table:
        """Percentiles (ms) of total latency and, if `ttft`, of time to first token, by model|endpoint|...

        Grouped by rollup dimensions (model, org, key, environment, release, day) and not `exact`, they come from
        the rollups' sketches (within 0.5 % of exact, in milliseconds); else exact, from every raw row.
        Columns: requests, latency_p50_ms, latency_p95_ms, ... (one per percentile), then ttft_p50_ms, ...
        """
        cols = resolve_by(by, LATENCY_BY)
        if not percentiles or any(not 0 < p < 1 for p in percentiles):
            raise LakeInputError(f"percentiles {tuple(percentiles)} are invalid: expected values between 0 and 1")
        names = by_names(by)
        if not exact and set(names) <= _ROLLUP_BY:
            return self.sketch_percentiles(names, percentiles, metrics=("latency", "ttft") if ttft else ("latency",),
                                           since=since, until=until, org=org)
        metrics = ["latency_ms", "ttft_ms"] if ttft else ["latency_ms"]
        aggs = ", ".join(
            f"quantile_cont({m}, {float(p)!r}) AS {m[:-3]}_p{format(p * 100, 'g').replace('.', '_')}_ms"
            for m in metrics for p in percentiles
        )
        where, params = self._where(since, org, until=until)
        return self._run(f"SELECT {cols}, count(*) AS requests, {aggs} FROM usage{where} GROUP BY ALL ORDER BY ALL",
                         params)

    def errors(self, by: str | Sequence[str] = "model", *, since: datetime | timedelta | str | None = None,
               org: str | None = None, until: datetime | timedelta | str | None = None) -> pa.Table:
        """Requests, errors (status ≥ 400) and error rate grouped by model|error_type|status|endpoint|..."""
        cols = resolve_by(by, ERRORS_BY)
        names = by_names(by)
        if set(names) <= _ROLLUP_BY:
            table = self.usage(names, since=since, until=until, org=org)
            rate = pc.divide(table.column("errors").cast(pa.float64()), table.column("requests").cast(pa.float64()))
            return table.select([*(ANALYTICS_DIMENSIONS[n] for n in names), "requests", "errors"]).append_column(
                "error_rate", rate)
        where, params = self._where(since, org, until=until)
        return self._run(
            f"SELECT {cols}, count(*) AS requests, count(*) FILTER (WHERE status >= 400) AS errors, "
            f"count(*) FILTER (WHERE status >= 400) / count(*) AS error_rate "
            f"FROM usage{where} GROUP BY ALL ORDER BY ALL", params)

    def top_keys(self, n: int = 10, *, since: datetime | timedelta | str | None = None,
                 org: str | None = None, until: datetime | timedelta | str | None = None) -> pa.Table:
        """The `n` API keys with the highest spend."""
        if n < 1:
            raise LakeInputError(f"n={n} is invalid: expected a positive integer")
        where, params = self._where(since, org, until=until)
        return self._run(
            f"SELECT key_id, org_id, count(*) AS requests, "
            f"CAST(sum(prompt_tokens + completion_tokens) AS BIGINT) AS tokens, {_COST} AS cost_usd "
            f"FROM usage{where} GROUP BY ALL ORDER BY cost_usd DESC, key_id LIMIT {int(n)}", params)

    def freshness(self) -> pa.Table:
        """Newest event time, its age in seconds, rows and files: is the pipeline keeping up?"""
        table = self._run("SELECT max(ts) AS newest_ts, count(*) AS rows FROM usage")
        newest = table.column("newest_ts")[0].as_py()
        lag = (datetime.now(UTC) - newest).total_seconds() if newest else None
        return table.append_column("lag_s", pa.array([lag], pa.float64())).append_column(
            "files", pa.array([len(self.files)], pa.int64()))

    def export_month(self, month: str, *, org: str | None = None) -> pa.Table:
        """One row per org × day × model of `month` ('YYYY-MM'): requests, tokens, exact cost_usd."""
        first, after = month_range(month)
        where, params = self._where(None, org, "dt >= CAST(? AS DATE) AND dt < CAST(? AS DATE)")
        return self._run(
            f"SELECT org_id, dt AS day, model, count(*) AS requests, "
            f"CAST(sum(prompt_tokens) AS BIGINT) AS prompt_tokens, "
            f"CAST(sum(completion_tokens) AS BIGINT) AS completion_tokens, {_COST} AS cost_usd "
            f"FROM usage{where} GROUP BY ALL ORDER BY ALL", [*params, first.isoformat(), after.isoformat()])


def _utc_date(epoch_us: int) -> str:
    return datetime.fromtimestamp(epoch_us / 1_000_000, UTC).date().isoformat()


__all__ = ["DIMENSIONS", "ERRORS_BY", "LATENCY_BY", "SPEND_BY", "LakeQuery"]
