"""Usage lake benchmark: spool→Parquet ingest, compaction and rollup build, then canned reports, ad-hoc SQL and
exports through LakeQuery against raw DuckDB over the raw files, locally and on S3, at one or two lake sizes.

Run: `.venv/bin/python -m benchmarks.lake [--rows 10000000] [--rows-large 100000000] [--no-s3]
[--out-md docs/benchmarks.md]`. The rows are spread evenly over `--span-hours` (default 744: January 2026,
the month the export measurement writes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow.fs as pafs

from analytics_lake import rollup
from analytics_lake.compaction import compact
from analytics_lake.location import LakeConfig, open_lake
from analytics_lake.spool import SpoolSink
from analytics_lake.spool_files import flush_spool_dir, segment_name
from analytics_lake.synthetic import make_event, synthetic_table
from analytics_lake.writer import write_table
from benchmarks.lake_analytics import (
    ADHOC,
    MAX_QUANTILE_ERROR,
    ORG,
    adhoc_sql,
    canned_reports,
    measure_adhoc,
    measure_canned,
    measure_export,
)
from benchmarks.services import free_port

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
CHUNK = 1_000_000
SEGMENT_ROWS = 150_000  # ≈ 64 MiB of ndjson, the default segment size
SECTION = "## Usage lake"
SPAN_HOURS = 24 * 31  # January 2026: a whole month for the export
CANNED_TARGET_S = 0.1  # canned reports at 100M rows
ADHOC_TARGET_RATIO = 1.5  # LakeQuery.sql over raw DuckDB with the same SQL


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


def build_lake(config: LakeConfig, rows: int, span_hours: int, *, per_hour: bool = False) -> dict:
    """Write `rows` synthetic rows in 1M-row batches (one file per hour each), compact, then `rollup.rebuild`.

    With `per_hour`, each hour's rows are generated and written as one file, as compaction leaves a lake
    (the same rows and spread; at 100M rows this saves splitting 100 batches into 744 hours and compacting
    74,400 files). Returns the seconds of each step and what the rebuild read and wrote.
    """
    start = time.perf_counter()
    if per_hour:
        offset = 0
        for hour in range(span_hours):
            n = rows // span_hours + (1 if hour < rows % span_hours else 0)
            table = synthetic_table(n, start_us=T0 + hour * 3_600_000_000, span_hours=1, offset=offset)
            write_table(config, table, writer_id="bench", seq=f"{hour:04d}")
            offset += n
    else:
        for offset in range(0, rows, CHUNK):
            table = synthetic_table(min(CHUNK, rows - offset), start_us=T0, span_hours=span_hours, offset=offset)
            write_table(config, table, writer_id="bench", seq=f"{offset // CHUNK:04d}")
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    compact(config, rollups=False)  # rollups are measured on their own below
    compact_s = time.perf_counter() - start
    start = time.perf_counter()
    report = rollup.rebuild(config)
    rollup_s = time.perf_counter() - start
    status = rollup.status(config)
    assert report["rows"] == rows, f"the rollup rebuild read {report['rows']} rows of {rows}"
    assert not status["stale"] and status["rolled_up"] == status["closed_hours"], status
    return {"rows": rows, "write_s": write_s, "compact_s": compact_s, "rollup_s": rollup_s,
            "rollup_rate": rows / rollup_s, "rollup_hours": report["hours_built"], "rollup_days": report["days_packed"]}


def span_start() -> datetime:
    return datetime.fromtimestamp(T0 / 1_000_000, UTC)


def window(span_hours: int) -> tuple[datetime, datetime]:
    """The ranged report's [since, until): 7 days from 13 minutes past the middle hour of the span."""
    since = span_start() + timedelta(hours=span_hours // 2, minutes=13)
    return since, since + timedelta(days=7)


def measure_point(config: LakeConfig, build: dict, workdir: Path, span_hours: int) -> dict:
    """Everything measured on one local lake: canned reports, ad-hoc SQL, the export."""
    since, _ = window(span_hours)
    return {"build": build, "canned": measure_canned(config, window(span_hours)),
            "adhoc": measure_adhoc(config, since.date()),
            "export": measure_export(config, span_start().strftime("%Y-%m"), workdir / "exports")}


def summary(point: dict) -> str:
    """One progress line: the seconds of every measurement."""
    parts = [f"rollup {point['build']['rollup_s']:.1f}s"] if "build" in point else []
    parts += [f"{k} {v['lake']:.3f}/{v['raw']:.3f}" for k, v in point["canned"].items() if k != "accuracy"]
    parts.append(f"quantile error {point['canned']['accuracy']['error']:.3%}")
    parts += [f"{k[:12]} {v['lake']:.3f}/{v['raw']:.3f}" for k, v in point.get("adhoc", {}).items()]
    parts += [f"export {k} {v['s']:.3f}s" for k, v in point.get("export", {}).items()]
    return ", ".join(parts)


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
    """Copy the raw files and the rollups (hour files and day packs) to the S3 lake."""
    src, dst = open_lake(local), open_lake(remote)
    for source, dest in ((src.usage_root, dst.usage_root), (rollup.rollup_root(src), rollup.rollup_root(dst))):
        pafs.copy_files(source, dest, source_filesystem=src.fs, destination_filesystem=dst.fs)


# -- markdown -------------------------------------------------------------------------------------


def scale(rows: int) -> str:
    """10000000 → '10M', 250000 → '250k'."""
    if rows >= 1_000_000 and rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}M"
    if rows >= 1_000 and rows % 1_000 == 0:
        return f"{rows // 1_000}k"
    return f"{rows:,}"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _s(seconds: float) -> str:
    return f"{seconds:.3f}"


def render(results: dict, command: str) -> str:
    local = [(label, p) for label, p in results["points"] if "build" in p]  # smaller lake first
    points = local + [(label, p) for label, p in results["points"] if "build" not in p]  # then S3
    span = results["span_hours"]
    first = span_start()
    last = first + timedelta(hours=span) - timedelta(microseconds=1)
    lines = [
        SECTION, "",
        f"`{command}` on {os.cpu_count()} cores (load average 1/5/15 min before the run: {results['load']}); "
        f"best of 3 warm runs after one warm-up; S3 = moto server on loopback. Synthetic rows spread evenly over "
        f"{span} hours ({first:%Y-%m-%d} … {last:%Y-%m-%d}), 20 orgs, 400 keys, 5 models; "
        "the first lake is written in 1M-row batches (one file per hour each) and compacted, the large one "
        "(--rows-large) one file per hour as compaction leaves a lake; then each is rolled up.", "",
        "How to read: *LakeQuery* is what `opsctl`, the analytics API and the TUI get: canned reports read the "
        "hourly rollups (whole days from day packs) and raw rows only for the hours not rolled up and the "
        "partial hours at a range's edges; *raw DuckDB* runs the exact equivalent query (same filters) over the "
        "raw Parquet files in the same run, i.e. what the report costs without rollups. S3 is a copy of the "
        "first lake (raw files and rollups) on the moto server: canned reports only. Every LakeQuery answer is "
        "checked against the raw one (counts and money exactly, "
        f"quantiles within {MAX_QUANTILE_ERROR:.0%}) before it is reported. Ad-hoc SQL is the same text "
        "through the guarded `usage` view (`LakeQuery.sql`) and through `read_parquet(glob, "
        "hive_partitioning=true)`: the ratio is the price of the guard and the view. Times are in seconds.", "",
        f"Ingest (spool segments → Parquet, {results['ingest_rows']:,} events): "
        f"**{results['ingest_rate']:,.0f} events/s** ({results['ingest_mib_s']:.0f} MiB/s of ndjson; "
        f"target ≥ 200,000). `SpoolSink.emit`: {results['emit_us']:.1f} µs per event.", "",
        "### Building the lake", "",
        _row("lake", "rows", "generate + write (s)", "compaction (s)", "`rollup.rebuild` (s)", "rollup rows/s",
             "hours rolled up", "days packed"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, p in local:
        b = p["build"]
        lines.append(_row(label, f"{b['rows']:,}", f"{b['write_s']:.1f}", f"{b['compact_s']:.1f}",
                          f"{b['rollup_s']:.1f}", f"{b['rollup_rate']:,.0f}", b["rollup_hours"], b["rollup_days"]))
    header = ["report"] + [f"{label} {side} (s)" for label, _ in points for side in ("LakeQuery", "raw")]
    lines += ["", "### Canned reports", "", _row(*header, "target at 100M (s)"), "|---" * (len(header) + 1) + "|"]
    for report in canned_reports(window(span)):
        cells = [_s(p["canned"][report.key][side]) for _, p in points for side in ("lake", "raw")]
        lines.append(_row(report.label, *cells, f"{CANNED_TARGET_S:g}"))
    header = ["query"] + [f"{label} {side}" for label, _ in local for side in ("LakeQuery.sql (s)", "raw (s)", "ratio")]
    lines += ["", "### Ad-hoc SQL", "", _row(*header, "target ratio"), "|---" * (len(header) + 1) + "|"]
    for label, _ in ADHOC:
        cells = []
        for _, p in local:
            m = p["adhoc"][label]
            cells += [_s(m["lake"]), _s(m["raw"]), f"{m['lake'] / m['raw']:.2f}×"]
        lines.append(_row(label, *cells, f"≤ {ADHOC_TARGET_RATIO:g}×"))
    lines += ["", "The SQL, with `{src}` = `usage` or the `read_parquet` call:", ""]
    lines += [f"- {label}: `{sql}`" for label, sql in adhoc_sql(window(span)[0].date())]
    month = first.strftime("%Y-%m")
    lines += ["", "### Export", "",
              f"`write_export` of {ORG}'s {month} (rows per org × day × key × model × environment, "
              "`spec_from_args(month=..., org=..., format=...)`); its requests and cost_micros equal the exact "
              "raw sums (asserted).", "",
              _row("lake", "format", "rows", "bytes", "seconds", "cost_micros (= raw sum)"),
              "|---|---|---|---|---|---|"]
    for label, p in local:
        for fmt, e in p["export"].items():
            lines.append(_row(label, fmt, f"{e['rows']:,}", f"{e['bytes']:,}", _s(e["s"]), f"{e['cost_micros']:,}"))
    lines += ["", "### Quantile accuracy", "",
              "Worst relative error of the rollup sketches' p50/p95/p99 (latency and TTFT, per model; of ok requests "
              "in the reliability report, of all requests in the latency report) against `quantile_cont` over the "
              "raw rows.", "",
              _row("lake", "quantiles compared", "max relative error", "where", "target"), "|---|---|---|---|---|"]
    for label, p in points:
        a = p["canned"]["accuracy"]
        lines.append(_row(label, a["compared"], f"{a['error']:.3%}", a["where"], f"< {MAX_QUANTILE_ERROR:.0%}"))
    lines += ["", "Raw DuckDB: `read_parquet(glob, hive_partitioning=true)` locally, a pyarrow dataset (hive "
              "partitions dt DATE, hour INTEGER) on S3."]
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


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is invalid: expected a positive integer")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=_positive, default=10_000_000, help="rows in the benchmark lake")
    parser.add_argument("--rows-large", type=int, default=0, help="also measure a second, larger lake (local only)")
    parser.add_argument("--ingest-rows", type=_positive, default=1_000_000, help="events through the spool path")
    parser.add_argument("--span-hours", type=_positive, default=SPAN_HOURS,
                        help=f"hours the rows are spread over from 2026-01-01 (default {SPAN_HOURS}: January)")
    parser.add_argument("--s3", action=argparse.BooleanOptionalAction, default=True,
                        help="also query a copy of the --rows lake on a moto S3 server (default: yes)")
    parser.add_argument("--out-md", type=Path, help="replace/append the Usage lake section of this markdown file")
    args = parser.parse_args(argv)
    if args.rows_large < 0:
        parser.error(f"--rows-large {args.rows_large} is invalid: expected 0 (none) or a row count")
    command = shlex.join([".venv/bin/python", "-m", "benchmarks.lake", *argv])
    workdir = Path(tempfile.mkdtemp(prefix="fg-lake-bench-"))
    moto = None
    try:
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        results: dict = {"load": load, "span_hours": args.span_hours, "points": [],
                         **measure_ingest(workdir, args.ingest_rows)}
        print(f"ingest: {results['ingest_rate']:,.0f} events/s, emit {results['emit_us']:.1f} µs", flush=True)
        local = LakeConfig(f"file://{workdir}/lake")
        point = measure_point(local, build_lake(local, args.rows, args.span_hours), workdir, args.span_hours)
        results["points"].append((f"local {scale(args.rows)}", point))
        print(f"local {scale(args.rows)}:", summary(point), flush=True)
        if args.s3:
            moto, endpoint = start_moto()
            remote = LakeConfig("s3://fg-bench/lake", s3_endpoint=endpoint, s3_access_key="bench",
                                s3_secret_key="bench")
            upload(local, remote)
            point = {"canned": measure_canned(remote, window(args.span_hours))}
            results["points"].append((f"S3 {scale(args.rows)}", point))
            print(f"S3 {scale(args.rows)}:", summary(point), flush=True)
            moto.terminate()
            moto.wait(10)
            moto = None
        if args.rows_large:
            shutil.rmtree(workdir / "lake")
            build = build_lake(local, args.rows_large, args.span_hours, per_hour=True)
            point = measure_point(local, build, workdir, args.span_hours)
            results["points"].append((f"local {scale(args.rows_large)}", point))
            print(f"local {scale(args.rows_large)}:", summary(point), flush=True)
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    markdown = render(results, command)
    print("\n" + markdown)
    if args.out_md:
        args.out_md.write_text(replace_section(args.out_md.read_text() if args.out_md.exists() else "", markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
