"""The lake benchmark's analytics half: canned reports and ad-hoc SQL through LakeQuery against raw DuckDB over
the raw files, finance exports, and how close the rollups' quantiles are to exact (used by `benchmarks.lake`).

Every measurement also checks its answer against the raw query: counts and money exactly, quantiles within 1 %.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from analytics_lake.exports import spec_from_args, write_export
from analytics_lake.location import LakeConfig, open_lake
from analytics_lake.query import LakeQuery
from analytics_lake.report_args import month_range

ORG = "org-3"  # the org of the org-scoped report and of the export
MODEL = "llama-3.1-70b"  # the model of the "hourly requests of one model" query
PERCENTILES = (0.5, 0.95, 0.99)
MAX_QUANTILE_ERROR = 0.01  # the reports promise 1 %; the sketches are built for 0.5 %
_QS = str(list(PERCENTILES))  # quantile_cont(x, [...]): one sort for the three
# the raw files' hive columns, typed as LakeQuery types them (a pyarrow dataset would read dt as text)
_PARTITIONS = pa.schema([("dt", pa.date32()), ("hour", pa.int32())])


def timed(fn: Callable[[], object], n: int = 3) -> tuple[float, object]:
    """Best of `n` warm runs (after one warm-up) in seconds, and the last run's result."""
    result = fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def raw_source(con: duckdb.DuckDBPyConnection, config: LakeConfig) -> str:
    """Every raw Parquet file of the lake with the hive columns dt/hour: a glob locally, a pyarrow dataset on S3."""
    lake = open_lake(config)
    if lake.is_local:
        return f"read_parquet('{lake.usage_root}/*/*/*.parquet', hive_partitioning=true)"
    dataset = ds.dataset(lake.usage_root, filesystem=lake.fs, format="parquet",
                         partitioning=ds.partitioning(_PARTITIONS, flavor="hive"))
    con.register("raw_usage", dataset)
    return "raw_usage"


def raw_connection() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'").fetchall()  # as LakeQuery: date_trunc on ts gives UTC hours
    return con


# -- canned reports -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Canned:
    """A canned report: how LakeQuery answers it (fleet session, org-scoped session) and the exact raw query."""

    key: str
    label: str
    report: Callable[[LakeQuery, LakeQuery], pa.Table]
    raw: str


_COUNTS = ("count(*) AS requests, count(*) FILTER (WHERE status >= 400) AS errors, "
           "count(*) FILTER (WHERE status >= 500) AS server_errors, sum(prompt_tokens) AS prompt_tokens, "
           "sum(completion_tokens) AS completion_tokens, sum(cost_micros) AS cost_micros")


def canned_reports(window: tuple[datetime, datetime]) -> tuple[Canned, ...]:
    """The canned reports; `window` is the [since, until) of the ranged one (what the API asks by default:
    the last 7 days, from a moment that is not on the hour)."""
    since, until = window
    ranged = (f"dt >= DATE '{since.date()}' AND dt <= DATE '{until.date()}' "
              f"AND ts >= TIMESTAMPTZ '{since.isoformat()}' AND ts < TIMESTAMPTZ '{until.isoformat()}'")
    return (
        Canned("spend", "spend by org by day", lambda q, _: q.spend(by="org,day"),
               "SELECT org_id, dt, sum(cost_micros) AS cost_micros FROM {src} GROUP BY ALL"),
        Canned("reliability", "reliability by model (status classes, latency/TTFT p50/p95/p99 of ok requests)",
               lambda q, _: q.reliability(["model"]),
               "SELECT model, count(*) AS requests, count(*) FILTER (WHERE status < 400) AS ok, "
               "count(*) FILTER (WHERE status >= 400 AND status < 500 AND status NOT IN (429, 499)) AS client_errors, "
               "count(*) FILTER (WHERE status = 429) AS rate_limited, "
               "count(*) FILTER (WHERE status = 499) AS cancelled, "
               "count(*) FILTER (WHERE status >= 500) AS server_errors, "
               f"quantile_cont(latency_ms, {_QS}) FILTER (WHERE status < 400) AS latency, "
               f"quantile_cont(ttft_ms, {_QS}) FILTER (WHERE status < 400) AS ttft FROM {{src}} GROUP BY ALL"),
        Canned("latency", "latency and TTFT p50/p95/p99 by model", lambda q, _: q.latency(by="model"),
               f"SELECT model, count(*) AS requests, quantile_cont(latency_ms, {_QS}) AS latency, "
               f"quantile_cont(ttft_ms, {_QS}) AS ttft FROM {{src}} GROUP BY ALL"),
        Canned("errors", "error rate by model", lambda q, _: q.errors(by="model"),
               "SELECT model, count(*) AS requests, count(*) FILTER (WHERE status >= 400) AS errors, "
               "count(*) FILTER (WHERE status >= 400) / count(*) AS error_rate FROM {src} GROUP BY ALL"),
        Canned("usage", "usage by org × model × day", lambda q, _: q.usage(["org", "model", "day"]),
               f"SELECT org_id, model, dt, {_COUNTS} FROM {{src}} GROUP BY ALL"),
        Canned("usage_7d", f"usage by org × model × day, 7 days from {since:%Y-%m-%d %H:%M} UTC (not on the hour)",
               lambda q, _: q.usage(["org", "model", "day"], since=since, until=until),
               f"SELECT org_id, model, dt, {_COUNTS} FROM {{src}} WHERE {ranged} GROUP BY ALL"),
        Canned("org_usage", f"usage of one org by model × day (session scoped to {ORG})",
               lambda _, o: o.usage(["model", "day"]),
               f"SELECT model, dt, {_COUNTS} FROM {{src}} WHERE org_id = '{ORG}' GROUP BY ALL"),
    )


def measure_canned(config: LakeConfig, window: tuple[datetime, datetime]) -> dict:
    """{report key: {"lake": s, "raw": s}} plus "accuracy": the rollup quantiles' worst relative error.

    Raises:
        AssertionError: a LakeQuery answer differs from the raw one (counts, money) or a quantile by > 1 %.
    """
    out: dict = {}
    answers: dict[str, tuple[pa.Table, pa.Table]] = {}
    con = raw_connection()
    src = raw_source(con, config)
    with LakeQuery(config, max_age_s=3600) as q, LakeQuery(config, org=ORG, max_age_s=3600) as o:
        q.refresh()
        o.refresh()
        for report in canned_reports(window):
            lake_s, lake_answer = timed(lambda r=report: r.report(q, o))
            raw_s, raw_answer = timed(lambda r=report: con.sql(r.raw.format(src=src)).to_arrow_table())
            out[report.key] = {"lake": lake_s, "raw": raw_s}
            answers[report.key] = (lake_answer, raw_answer)  # type: ignore[assignment]  # both are tables
    con.close()
    check_canned(answers)
    out["accuracy"] = quantile_accuracy(answers)
    return out


def _rows(table: pa.Table, keys: Sequence[str], values: Sequence[str]) -> dict[tuple, tuple]:
    return {tuple(r[k] for k in keys): tuple(r[v] for v in values) for r in table.to_pylist()}


def check_canned(answers: dict[str, tuple[pa.Table, pa.Table]]) -> None:
    """Counts and money of every canned report equal the raw query's, exactly."""
    lake, raw = answers["spend"]
    spent = {k: (int(v[0] * Decimal(1_000_000)),) for k, v in _rows(lake, ("org_id", "day"), ("cost_usd",)).items()}
    assert spent == _rows(raw, ("org_id", "dt"), ("cost_micros",)), "spend by org by day differs from raw"
    counts = ("requests", "errors", "server_errors", "prompt_tokens", "completion_tokens", "cost_micros")
    for key in ("usage", "usage_7d"):
        lake, raw = answers[key]
        assert lake.num_rows and _rows(lake, ("org_id", "model", "day"), counts) == \
            _rows(raw, ("org_id", "model", "dt"), counts), f"{key}: usage by org × model × day differs from raw"
    lake, raw = answers["org_usage"]
    assert lake.num_rows and _rows(lake, ("model", "day"), counts) == _rows(raw, ("model", "dt"), counts), \
        f"usage of {ORG} differs from raw"
    classes = ("requests", "ok", "client_errors", "rate_limited", "cancelled", "server_errors")
    lake, raw = answers["reliability"]
    assert _rows(lake, ("model",), classes) == _rows(raw, ("model",), classes), "reliability counts differ from raw"
    lake, raw = answers["errors"]
    assert _rows(lake, ("model",), ("requests", "errors")) == _rows(raw, ("model",), ("requests", "errors")), \
        "error counts differ from raw"
    lake, raw = answers["latency"]
    assert _rows(lake, ("model",), ("requests",)) == _rows(raw, ("model",), ("requests",)), \
        "latency report request counts differ from raw"


def quantile_accuracy(answers: dict[str, tuple[pa.Table, pa.Table]]) -> dict:
    """The worst relative error of the sketch quantiles (reliability: ok requests; latency: all) vs quantile_cont."""
    worst = {"error": 0.0, "where": "", "compared": 0}
    for key, scope in (("reliability", "ok requests"), ("latency", "all requests")):
        lake, raw = answers[key]
        exact = {r["model"]: r for r in raw.to_pylist()}
        for row in lake.to_pylist():
            for metric in ("latency", "ttft"):
                for i, p in enumerate(PERCENTILES):
                    name = f"{metric}_p{format(p * 100, 'g')}_ms"
                    approx, truth = row[name], exact[row["model"]][metric][i]
                    error = abs(approx - truth) / truth
                    worst["compared"] += 1
                    if error >= worst["error"]:
                        worst.update(error=error, where=f"{name} of {row['model']} ({scope})")
    assert worst["compared"], "no quantiles to compare"
    assert worst["error"] < MAX_QUANTILE_ERROR, f"rollup quantile off by {worst['error']:.3%}: {worst['where']}"
    return worst


# -- ad-hoc SQL -----------------------------------------------------------------------------------


ADHOC = (
    ("top 10 keys by cost on one day",
     "SELECT key_id, org_id, sum(cost_micros) AS cost_micros FROM {src} WHERE dt = DATE '{day}' "
     "GROUP BY ALL ORDER BY cost_micros DESC, key_id LIMIT 10"),
    ("hourly request count of one model",
     f"SELECT date_trunc('hour', ts) AS hour_start, count(*) AS requests FROM {{src}} WHERE model = '{MODEL}' "
     "GROUP BY ALL ORDER BY ALL"),
    ("p99 latency by endpoint",
     "SELECT endpoint, quantile_cont(latency_ms, 0.99) AS p99_ms FROM {src} GROUP BY ALL ORDER BY ALL"),
    ("distinct keys by org",
     "SELECT org_id, count(DISTINCT key_id) AS keys FROM {src} GROUP BY ALL ORDER BY ALL"),
)


def adhoc_sql(day: date) -> list[tuple[str, str]]:
    """(label, SQL with a {src} placeholder) of each ad-hoc query; `day` is the one the top-keys query reads."""
    return [(label, sql.replace("{day}", day.isoformat())) for label, sql in ADHOC]


def measure_adhoc(config: LakeConfig, day: date) -> dict:
    """{label: {"lake": s, "raw": s}}: the same SQL text through LakeQuery.sql (the guarded `usage` view) and
    through raw DuckDB over the files.

    Raises:
        AssertionError: the two answers differ.
    """
    out = {}
    con = raw_connection()
    src = raw_source(con, config)
    with LakeQuery(config, max_age_s=3600) as q:
        q.refresh()
        for label, sql in adhoc_sql(day):
            lake_s, lake_answer = timed(lambda sql=sql: q.sql(sql.format(src="usage")))
            raw_s, raw_answer = timed(lambda sql=sql: con.sql(sql.format(src=src)).to_arrow_table())
            assert lake_answer.num_rows and _same(lake_answer, raw_answer), f"{label}: LakeQuery.sql differs from raw"
            out[label] = {"lake": lake_s, "raw": raw_s}
    con.close()
    return out


def _same(a: pa.Table, b: pa.Table) -> bool:
    """Equal row by row; floats to 1e-9 relative (parallel sums may add in another order)."""
    rows_a, rows_b = a.to_pylist(), b.to_pylist()
    if len(rows_a) != len(rows_b):
        return False
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for va, vb in zip(ra.values(), rb.values(), strict=True):
            if isinstance(va, float) and isinstance(vb, float):
                if not math.isclose(va, vb, rel_tol=1e-9):
                    return False
            elif va != vb:
                return False
    return True


# -- exports --------------------------------------------------------------------------------------


def measure_export(config: LakeConfig, month: str, workdir: Path) -> dict:
    """{format: {"s", "rows", "bytes", "requests", "cost_micros"}} of `write_export` of ORG's `month`.

    Raises:
        AssertionError: the file's requests or cost_micros differ from the exact raw sums.
    """
    first, after = month_range(month)
    con = raw_connection()
    src = raw_source(con, config)
    start, end = (datetime.combine(d, datetime.min.time(), tzinfo=UTC) for d in (first, after))
    requests, micros = con.sql(
        f"SELECT count(*), coalesce(sum(cost_micros), 0) FROM {src} WHERE org_id = ? AND ts >= ? AND ts < ?",
        params=[ORG, start, end]).fetchall()[0]
    con.close()
    out = {}
    workdir.mkdir(parents=True, exist_ok=True)
    with LakeQuery(config, max_age_s=3600) as q:
        q.refresh()
        for fmt in ("csv", "parquet"):
            spec = spec_from_args(month=month, org=ORG, format=fmt)
            path = workdir / spec.filename()
            seconds, result = timed(lambda spec=spec, path=path: write_export(q, spec, path))
            assert result.requests == requests and result.cost_micros == micros, (  # type: ignore[attr-defined]
                f"{fmt} export sums differ from raw: {result} vs requests={requests} cost_micros={micros}")
            out[fmt] = {"s": seconds, **result.as_dict()}  # type: ignore[attr-defined]  # an ExportResult
            path.unlink()
    return out
