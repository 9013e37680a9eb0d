"""Usage lake benchmark: spool→Parquet ingest rate and report latency over N rows, local and on S3.

Run: `.venv/bin/python -m benchmarks.lake [--rows 10000000] [--s3] [--out-md docs/benchmarks.md]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from analytics_lake.compaction import compact
from analytics_lake.location import LakeConfig, open_lake
from analytics_lake.query import LakeQuery
from analytics_lake.spool import SpoolSink
from analytics_lake.spool_files import flush_spool_dir, segment_name
from analytics_lake.synthetic import make_event, synthetic_table
from analytics_lake.writer import write_table
from benchmarks.services import free_port

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
CHUNK = 1_000_000
SEGMENT_ROWS = 150_000  # ≈ 64 MiB of ndjson, the default segment size
SECTION = "## Usage lake"
RAW_SPEND = "SELECT org_id, dt, sum(cost_micros) FROM {src} GROUP BY ALL"
RAW_P95 = "SELECT model, quantile_cont(latency_ms, 0.95) FROM {src} GROUP BY ALL"
RAW_ERRORS = "SELECT model, count(*) FILTER (WHERE status >= 400) / count(*) FROM {src} GROUP BY ALL"


def best_of(fn: Callable[[], object], n: int = 3) -> float:
    fn()  # warm
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure_ingest(workdir: Path, rows: int) -> dict:
    """Spool segments (as SpoolSink writes them) → Parquet, through the same code as a live flush."""
    spool = workdir / "spool" / "bench"
    spool.mkdir(parents=True)
    lake = LakeConfig(f"file://{workdir}/ingest-lake")
    con = duckdb.connect()
    for n, start in enumerate(range(0, rows, SEGMENT_ROWS)):
        chunk = synthetic_table(min(SEGMENT_ROWS, rows - start), start_us=T0, span_hours=2, offset=start)
        con.register("chunk", chunk)
        path = spool / segment_name(n + 1)
        con.execute(f"COPY (SELECT * REPLACE (epoch_us(ts) AS ts) FROM chunk) TO '{path}' (FORMAT json)").fetchall()
        con.unregister("chunk")
    con.close()
    size = sum(p.stat().st_size for p in spool.iterdir())
    start = time.perf_counter()
    report = flush_spool_dir(spool, lake)
    elapsed = time.perf_counter() - start
    assert report.rows == rows, (report.rows, rows)
    emit_us = asyncio.run(_emit_cost(workdir))
    return {"ingest_rows": rows, "ingest_s": elapsed, "ingest_rate": rows / elapsed,
            "ingest_mib_s": size / elapsed / 2**20, "emit_us": emit_us}


async def _emit_cost(workdir: Path, n: int = 100_000) -> float:
    """Mean cost of SpoolSink.emit (orjson + os.write) on the event loop, in µs."""
    sink = SpoolSink(workdir / "spool" / "emit", LakeConfig(f"file://{workdir}/emit-lake"), "emit",
                     flush_interval_s=3600)
    await sink.start()
    events = [make_event(T0 + i) for i in range(n)]
    start = time.perf_counter()
    for event in events:
        await sink.emit(event)
    elapsed = time.perf_counter() - start
    await sink.close()
    return elapsed / n * 1e6


def build_lake(config: LakeConfig, rows: int, span_hours: int) -> float:
    """Write `rows` synthetic rows in 1M-row batches (one file per hour each), then compact; returns compaction s."""
    for offset in range(0, rows, CHUNK):
        table = synthetic_table(min(CHUNK, rows - offset), start_us=T0, span_hours=span_hours, offset=offset)
        write_table(config, table, writer_id="bench", seq=f"{offset // CHUNK:04d}")
    start = time.perf_counter()
    compact(config)
    return time.perf_counter() - start


def measure_queries(config: LakeConfig) -> dict:
    lake = open_lake(config)
    out: dict = {}
    with LakeQuery(config, max_age_s=3600) as q:
        q.refresh()
        out["spend"] = best_of(lambda: q.spend(by="org,day"))
        out["p95"] = best_of(lambda: q.latency(by="model", percentiles=(0.95,), ttft=False))
        out["latency"] = best_of(lambda: q.latency(by="model"))
        out["errors"] = best_of(lambda: q.errors(by="model"))
    con = duckdb.connect()
    if lake.is_local:
        src = f"read_parquet('{lake.usage_root}/*/*/*.parquet', hive_partitioning=true)"
    else:
        dataset = ds.dataset(lake.usage_root, filesystem=lake.fs, format="parquet", partitioning="hive")
        con.register("raw_usage", dataset)
        src = "raw_usage"
    for name, sql in (("raw_spend", RAW_SPEND), ("raw_p95", RAW_P95), ("raw_errors", RAW_ERRORS)):
        out[name] = best_of(lambda sql=sql: con.sql(sql.format(src=src)).to_arrow_table())
    con.close()
    return out


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="bench",
                           secret_key="bench", region="us-east-1", allow_bucket_creation=True)
    while True:
        try:
            fs.create_dir("fg-bench")
            return proc, endpoint
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.2)


def upload(local: LakeConfig, remote: LakeConfig) -> None:
    src, dst = open_lake(local), open_lake(remote)
    pafs.copy_files(src.usage_root, dst.usage_root, source_filesystem=src.fs, destination_filesystem=dst.fs)


def render(results: dict, args: argparse.Namespace) -> str:
    rows = f"{args.rows:,}"
    lines = [
        SECTION, "",
        f"`.venv/bin/python -m benchmarks.lake --rows {args.rows}{' --s3' if args.s3 else ''}` "
        f"on {os.cpu_count()} cores (load average before the run: {results['load']}); best of 3 warm runs; "
        "S3 = moto server on loopback.", "",
        f"Ingest (spool segments → Parquet, {results['ingest_rows']:,} events): "
        f"**{results['ingest_rate']:,.0f} events/s** ({results['ingest_mib_s']:.0f} MiB/s of ndjson; target ≥ 200,000). "
        f"`SpoolSink.emit`: {results['emit_us']:.1f} µs per event.", "",
        f"Compaction of {rows} rows written in 1M-row batches: {results['local']['compact_s']:.1f} s.", "",
        f"| query over {rows} rows | lake | LakeQuery (s) | raw DuckDB (s) | target (s) |",
        "|---|---|---|---|---|",
    ]
    for where, res in (("local", results.get("local")), ("S3", results.get("s3")),
                       ("local 100M", results.get("large"))):
        if not res:
            continue
        lines += [
            f"| spend by org by day | {where} | {res['spend']:.3f} | {res['raw_spend']:.3f} | 0.15 |",
            f"| p95 latency by model | {where} | {res['p95']:.3f} | {res['raw_p95']:.3f} | 0.25 |",
            f"| latency report: p50/p95/p99 of latency and TTFT by model | {where} | {res['latency']:.3f} | | |",
            f"| error rate by model | {where} | {res['errors']:.3f} | {res['raw_errors']:.3f} | |",
        ]
    lines.append("")
    lines.append("Raw DuckDB: `read_parquet(glob, hive_partitioning=true)` locally, a plain pyarrow dataset on S3.")
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str) -> str:
    """Replace the `## Usage lake` section (up to the next `## `) or append it."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        body = text.rstrip()
        return ((body + "\n\n") if body else "# Benchmarks\n\n") + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    before, after = "\n".join(lines[:start]).rstrip(), "\n".join(lines[end:]).strip()
    return (before + "\n\n" if before else "") + section + ("\n" + after + "\n" if after else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows in the query benchmark lake")
    parser.add_argument("--ingest-rows", type=int, default=1_000_000, help="events through the spool path")
    parser.add_argument("--span-hours", type=int, default=24 * 7, help="hours the rows are spread over")
    parser.add_argument("--s3", action="store_true", help="also query the lake on a moto S3 server")
    parser.add_argument("--rows-large", type=int, default=0, help="also measure a scaling point (e.g. 100000000)")
    parser.add_argument("--out-md", type=Path, help="replace/append the Usage lake section of this markdown file")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="fg-lake-bench-"))
    moto = None
    try:
        load = os.getloadavg()[0]
        results: dict = {"load": f"{load:.1f}", **measure_ingest(workdir, args.ingest_rows)}
        print(f"ingest: {results['ingest_rate']:,.0f} events/s, emit {results['emit_us']:.1f} µs", flush=True)
        local = LakeConfig(f"file://{workdir}/lake")
        compact_s = build_lake(local, args.rows, args.span_hours)
        results["local"] = {"compact_s": compact_s, **measure_queries(local)}
        print("local:", {k: round(v, 3) for k, v in results["local"].items()}, flush=True)
        if args.s3:
            moto, endpoint = start_moto()
            remote = LakeConfig("s3://fg-bench/lake", s3_endpoint=endpoint, s3_access_key="bench",
                                s3_secret_key="bench")
            upload(local, remote)
            results["s3"] = measure_queries(remote)
            print("s3:", {k: round(v, 3) for k, v in results["s3"].items()}, flush=True)
        if args.rows_large:
            shutil.rmtree(workdir / "lake")
            build_lake(local, args.rows_large, args.span_hours)
            results["large"] = measure_queries(local)
            print("large:", {k: round(v, 3) for k, v in results["large"].items()}, flush=True)
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    markdown = render(results, args)
    print("\n" + markdown)
    if args.out_md:
        args.out_md.write_text(replace_section(args.out_md.read_text() if args.out_md.exists() else "", markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
