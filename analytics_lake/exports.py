"""Finance exports of the lake: spend per org × day × key × model × environment as CSV, Parquet or SQLite.

Two column sets: "fleetgate" (what a finance team expects) and "focus" (FinOps FOCUS 1.x shaped). The same
code serves `opsctl usage export` and the gateway's export jobs; money is exact (integer micro-USD, 6-place decimals).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from analytics_lake.report_args import ReportArgumentError, check_range, month_range, parse_since, parse_until

if TYPE_CHECKING:
    from analytics_lake.query import LakeQuery

FORMATS = ("csv", "parquet", "sqlite")
SCHEMAS = ("fleetgate", "focus")
# an output file's suffix → its format (what `opsctl usage export --out` infers)
SUFFIX_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".sqlite": "sqlite",
                  ".sqlite3": "sqlite", ".db": "sqlite"}
MAX_RANGE = timedelta(days=366)  # a year (leap years included) per file; longer asks are split by the caller
GROUP_BY = ("org", "day", "key", "model", "environment")  # finance granularity, in output order
PARQUET_ROW_GROUP = 131_072
BATCH_ROWS = 65_536  # rows converted and written at a time (CSV, SQLite)
SQLITE_TABLE = "usage_daily"

SERVICE_NAME = "Fleetgate LLM Gateway"
SERVICE_CATEGORY = "AI and Machine Learning"  # a FOCUS ServiceCategory value
PROVIDER = "Fleetgate"
CURRENCY = "USD"
UNATTRIBUTED = "unattributed"  # FOCUS BillingAccountId of rows without an org (e.g. failed authentication)

_USD = pa.decimal128(38, 6)
_TS = pa.timestamp("us", tz="UTC")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
# A spreadsheet runs a cell starting with one of these as a formula (OWASP "CSV injection").
_FORMULA_START = r"^[=+\-@\t\r]"

# Column sets: name → Arrow type (the Parquet schema; CSV and SQLite render the same values as text/integers).
FLEETGATE_COLUMNS: dict[str, pa.DataType] = {
    "period_start": _TS, "period_end": _TS, "day": pa.date32(), "org_id": pa.string(), "key_id": pa.string(),
    "model": pa.string(), "environment": pa.string(), "requests": pa.int64(), "errors": pa.int64(),
    "prompt_tokens": pa.int64(), "completion_tokens": pa.int64(), "total_tokens": pa.int64(),
    "cost_micros": pa.int64(), "cost_usd": _USD, "currency": pa.string(),
}
FOCUS_COLUMNS: dict[str, pa.DataType] = {
    "BilledCost": _USD, "EffectiveCost": _USD, "ListCost": _USD, "ContractedCost": _USD,
    "BillingCurrency": pa.string(), "BillingAccountId": pa.string(),
    "BillingPeriodStart": _TS, "BillingPeriodEnd": _TS, "ChargePeriodStart": _TS, "ChargePeriodEnd": _TS,
    "ChargeCategory": pa.string(), "ChargeClass": pa.string(), "ChargeFrequency": pa.string(),
    "ChargeDescription": pa.string(), "ServiceName": pa.string(), "ServiceCategory": pa.string(),
    "ProviderName": pa.string(), "PublisherName": pa.string(), "InvoiceIssuerName": pa.string(),
    "ResourceId": pa.string(), "ResourceName": pa.string(), "ResourceType": pa.string(),
    "ConsumedQuantity": pa.int64(), "ConsumedUnit": pa.string(), "PricingQuantity": _USD, "PricingUnit": pa.string(),
    "SubAccountId": pa.string(), "Tags": pa.string(),
    # FOCUS custom columns (x_ prefix): the exact integers and the dimensions Tags only carries as text
    "x_CostMicros": pa.int64(), "x_Requests": pa.int64(), "x_Errors": pa.int64(), "x_PromptTokens": pa.int64(),
    "x_CompletionTokens": pa.int64(), "x_KeyId": pa.string(), "x_Environment": pa.string(),
}
COLUMNS = {"fleetgate": FLEETGATE_COLUMNS, "focus": FOCUS_COLUMNS}
# The columns the SQLite views and indexes use, per schema (same view columns whatever the schema).
_SQL_NAMES = {
    "fleetgate": {"org": "org_id", "key": "key_id", "model": "model", "environment": "environment",
                  "month": "substr(day, 1, 7)", "day": "day", "requests": "requests", "tokens": "total_tokens",
                  "micros": "cost_micros"},
    "focus": {"org": "SubAccountId", "key": "x_KeyId", "model": "ResourceName", "environment": "x_Environment",
              "month": "substr(ChargePeriodStart, 1, 7)", "day": "ChargePeriodStart", "requests": "x_Requests",
              "tokens": "ConsumedQuantity", "micros": "x_CostMicros"},
}


# -- what to export -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportSpec:
    """One export: whose usage (`org`, None = every org), which range [start, end) in UTC, file format and columns.

    Raises:
        ReportArgumentError: on construction, a naive/reversed/too long range or an unknown format/schema.
    """

    org: str | None
    start: datetime
    end: datetime
    format: str = "csv"
    schema: str = "fleetgate"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ReportArgumentError("format", f"format {_shown(self.format)!r} is invalid: expected one of "
                                                f"{', '.join(FORMATS)}")
        if self.schema not in SCHEMAS:
            raise ReportArgumentError("schema", f"schema {_shown(self.schema)!r} is invalid: expected one of "
                                                f"{', '.join(SCHEMAS)}")
        if self.org is not None and not self.org.strip():
            raise ReportArgumentError("org", "org is invalid: expected an org id, not an empty string")
        for name in ("start", "end"):
            moment = getattr(self, name)
            if not isinstance(moment, datetime) or moment.tzinfo is None:
                raise ReportArgumentError("since" if name == "start" else "until",
                                          f"{name} must be a timezone-aware datetime")
            object.__setattr__(self, name, moment.astimezone(UTC))
        check_range(self.start, self.end)
        if self.end - self.start > MAX_RANGE:
            raise ReportArgumentError("until", f"the range {self.start.isoformat()} … {self.end.isoformat()} is "
                                               f"too long: export at most {MAX_RANGE.days} days per file")

    def filename(self) -> str:
        """A safe file name: usage-acme-2026-03.csv, usage-all-2026-03-01_2026-03-15.focus.parquet, ...

        A whole month shows as YYYY-MM, whole days as first_last (both included), anything else as
        compact UTC timestamps start_end (end excluded).
        """
        who = _UNSAFE_NAME.sub("_", self.org).strip("._")[:64] if self.org else "all"
        variant = ".focus" if self.schema == "focus" else ""
        return f"usage-{who or 'org'}-{self.period_label()}{variant}.{self.format}"

    def period_label(self) -> str:
        """The range as file names show it (see `filename`)."""
        start, end = self.start, self.end
        if _is_midnight(start) and _is_midnight(end):
            if start.day == 1 and end.date() == month_range(start.strftime("%Y-%m"))[1]:
                return start.strftime("%Y-%m")
            return f"{start.date().isoformat()}_{(end - timedelta(days=1)).date().isoformat()}"
        return f"{start:%Y%m%dT%H%M%SZ}_{end:%Y%m%dT%H%M%SZ}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (what an export job stores); `spec_from_dict` reads it back."""
        return {"org": self.org, "start": _iso(self.start), "end": _iso(self.end), "format": self.format,
                "schema": self.schema}


def spec_from_dict(data: Mapping[str, Any]) -> ExportSpec:
    """The inverse of `ExportSpec.as_dict`.

    Raises:
        ReportArgumentError: a missing or invalid field.
    """
    try:
        start, end = datetime.fromisoformat(data["start"]), datetime.fromisoformat(data["end"])
    except (KeyError, TypeError, ValueError) as e:
        raise ReportArgumentError("since", f"stored export spec is invalid: {e}") from e
    return ExportSpec(org=data.get("org"), start=start, end=end, format=data.get("format", "csv"),
                      schema=data.get("schema", "fleetgate"))


def spec_from_args(*, month: str | None = None, since: str | datetime | None = None,
                   until: str | datetime | None = None, org: str | None = None, format: str = "csv",
                   schema: str = "fleetgate", now: datetime | None = None) -> ExportSpec:
    """An ExportSpec from what a person types: `month` ('2026-03') or `since` [+ `until`, default now].

    `since`/`until` take what the reports take (7d, 2026-03-01, ISO timestamps; a bare date as `until`
    includes that day).

    Raises:
        ReportArgumentError: naming "month", "since", "until", "org", "format" or "schema".
    """
    format, schema = format.strip().lower(), schema.strip().lower()
    if month is not None and since is not None:
        raise ReportArgumentError("month", "give either --month or --since (with --until), not both")
    if month is not None:
        if until is not None:
            raise ReportArgumentError("until", "--until goes with --since, not with --month")
        first, after = month_range(month)
        return ExportSpec(org=org, start=_midnight(first), end=_midnight(after), format=format, schema=schema)
    if since is None:
        raise ReportArgumentError("month", "say which usage to export: --month YYYY-MM, or --since (and --until)")
    now = now or datetime.now(UTC)
    start = parse_since(since, now) if isinstance(since, str) else _aware(since)
    end = now if until is None else parse_until(until, now) if isinstance(until, str) else _aware(until)
    return ExportSpec(org=org, start=start, end=end, format=format, schema=schema)


@dataclass
class ExportResult:
    """What `write_export` wrote: rows, the requests and exact micro-USD they sum to, file size and SHA-256."""

    rows: int
    requests: int
    cost_micros: int
    bytes: int
    sha256: str

    @property
    def cost_usd(self) -> str:
        return usd_text(self.cost_micros)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "requests": self.requests, "cost_micros": self.cost_micros,
                "cost_usd": self.cost_usd, "bytes": self.bytes, "sha256": self.sha256}


def usd_text(micros: int) -> str:
    """Integer micro-USD as an exact dollar amount with 6 places: 1234567 → '1.234567'."""
    sign, micros = ("-", -micros) if micros < 0 else ("", micros)
    return f"{sign}{micros // 1_000_000}.{micros % 1_000_000:06d}"


# -- building the table ---------------------------------------------------------------------------


def export_table(q: LakeQuery, spec: ExportSpec) -> pa.Table:
    """The export's rows with the spec's columns (typed as in COLUMNS), ordered by org, day, key, model, env.

    Raises:
        LakeError: the lake cannot be read.
    """
    usage = q.usage(group_by=GROUP_BY, since=spec.start, until=spec.end, org=spec.org).combine_chunks()
    build = _fleetgate_columns if spec.schema == "fleetgate" else _focus_columns
    columns = build(usage, spec)
    names = COLUMNS[spec.schema]
    return pa.table([columns[n].cast(t) for n, t in names.items()], schema=_schema(spec))


def _schema(spec: ExportSpec) -> pa.Schema:
    meta = {"fleetgate.export": json.dumps(spec.as_dict(), sort_keys=True)}
    return pa.schema(list(COLUMNS[spec.schema].items()), metadata=meta)


def _fleetgate_columns(usage: pa.Table, spec: ExportSpec) -> dict[str, pa.Array]:
    n = usage.num_rows
    col = usage.column
    return {
        "period_start": _const(spec.start, _TS, n), "period_end": _const(spec.end, _TS, n),
        "day": col("day"), "org_id": col("org_id"), "key_id": col("key_id"), "model": col("model"),
        "environment": col("environment"), "requests": col("requests"), "errors": col("errors"),
        "prompt_tokens": col("prompt_tokens"), "completion_tokens": col("completion_tokens"),
        "total_tokens": pc.add_checked(col("prompt_tokens"), col("completion_tokens")),
        "cost_micros": col("cost_micros"), "cost_usd": col("cost_usd").cast(_USD),
        "currency": _const(CURRENCY, pa.string(), n),
    }


def _focus_columns(usage: pa.Table, spec: ExportSpec) -> dict[str, pa.Array]:
    n = usage.num_rows
    col = usage.column
    cost = col("cost_usd").cast(_USD)
    tokens = pc.add_checked(col("prompt_tokens"), col("completion_tokens"))
    # The charge period is the row's UTC day, clipped to the export range (a range may start or end mid-day).
    day_start = col("day").cast(pa.timestamp("us")).cast(_TS)
    day_end = pc.add(day_start, pa.scalar(timedelta(days=1), pa.duration("us")))
    first, after = pa.scalar(spec.start, _TS), pa.scalar(spec.end, _TS)
    environment, model = col("environment"), col("model")
    resource = pc.binary_join_element_wise("model/", pc.fill_null(environment, ""), "/",
                                           pc.fill_null(model, ""), "")
    tags = pc.binary_join_element_wise(
        '{"environment":', _mapped(environment, json.dumps), ',"key":', _mapped(col("key_id"), json.dumps),
        ',"model":', _mapped(model, json.dumps), ',"org":', _mapped(col("org_id"), json.dumps), "}", "")

    def const(value: str) -> pa.Array:
        return _const(value, pa.string(), n)

    return {
        "BilledCost": cost, "EffectiveCost": cost, "ListCost": cost, "ContractedCost": cost,
        "BillingCurrency": const(CURRENCY), "BillingAccountId": pc.fill_null(col("org_id"), UNATTRIBUTED),
        "BillingPeriodStart": _const(spec.start, _TS, n), "BillingPeriodEnd": _const(spec.end, _TS, n),
        "ChargePeriodStart": pc.if_else(pc.less(day_start, first), first, day_start),
        "ChargePeriodEnd": pc.if_else(pc.greater(day_end, after), after, day_end),
        "ChargeCategory": const("Usage"), "ChargeClass": pa.nulls(n, pa.string()),
        "ChargeFrequency": const("Usage-Based"),
        "ChargeDescription": pc.binary_join_element_wise(
            "LLM inference: ", pc.fill_null(model, "unknown model"), " (", pc.fill_null(environment, "unknown"),
            "), prompt and completion tokens", ""),
        "ServiceName": const(SERVICE_NAME), "ServiceCategory": const(SERVICE_CATEGORY),
        "ProviderName": const(PROVIDER), "PublisherName": const(PROVIDER), "InvoiceIssuerName": const(PROVIDER),
        "ResourceId": resource, "ResourceName": model, "ResourceType": const("Model"),
        "ConsumedQuantity": tokens, "ConsumedUnit": const("Tokens"),
        "PricingQuantity": _per_million(tokens), "PricingUnit": const("1M Tokens"),
        "SubAccountId": col("org_id"), "Tags": tags,
        "x_CostMicros": col("cost_micros"), "x_Requests": col("requests"), "x_Errors": col("errors"),
        "x_PromptTokens": col("prompt_tokens"), "x_CompletionTokens": col("completion_tokens"),
        "x_KeyId": col("key_id"), "x_Environment": environment,
    }


def _const(value: object, typ: pa.DataType, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(value, typ), n)


def _per_million(tokens: pa.Array) -> pa.Array:
    """Tokens in millions, exact (decimal arithmetic: an int64 has at most 19 digits)."""
    return pc.multiply(tokens.cast(pa.decimal128(19, 0)), pa.scalar(Decimal("0.000001"), pa.decimal128(7, 6)))


def _mapped(values: pa.Array | pa.ChunkedArray, func: Callable[[Any], str]) -> pa.Array:
    """`func` applied to each distinct value (few: ids, models, instants), mapped back onto every row."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    distinct = pc.unique(values)
    texts = pa.array([func(v) for v in distinct.to_pylist()], pa.string())
    return pc.take(texts, pc.index_in(values, value_set=distinct))


# -- writing --------------------------------------------------------------------------------------


def write_export(q: LakeQuery, spec: ExportSpec, path: str | Path) -> ExportResult:
    """Write the export completely at `path` (replacing it), fsync it, and return its sums and SHA-256.

    The caller picks a temporary name and renames it when this returns, so that no reader ever sees a
    partial file under the final name. CSV and Parquet files are deterministic (same data, same bytes).

    Raises:
        LakeError: the lake cannot be read.
        OSError: the file cannot be written.
    """
    path = Path(path)
    table = export_table(q, spec)
    names = _SQL_NAMES[spec.schema]  # the requests and micro-USD columns are plain names in both schemas
    requests = int(pc.sum(table.column(names["requests"])).as_py() or 0)
    micros = int(pc.sum(table.column(names["micros"])).as_py() or 0)
    if spec.format == "csv":
        _write_csv(table, path)
    elif spec.format == "parquet":
        _write_parquet(table, path)
    else:
        _write_sqlite(table, spec, path, requests=requests, micros=micros)
    size, digest = _fsync_and_hash(path)
    return ExportResult(rows=table.num_rows, requests=requests, cost_micros=micros, bytes=size, sha256=digest)


def _write_parquet(table: pa.Table, path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, str(path), compression="zstd", row_group_size=PARQUET_ROW_GROUP)


def _text_batches(table: pa.Table, *, csv_safe: bool) -> Iterator[pa.RecordBatch]:
    """The table in batches with instants as ISO text (…Z), days as YYYY-MM-DD and money as exact decimals."""
    for batch in table.to_batches(max_chunksize=BATCH_ROWS):
        columns = []
        for column in batch.columns:
            if pa.types.is_timestamp(column.type):
                column = _mapped(column, lambda v: None if v is None else _iso(v))
            elif pa.types.is_date(column.type) or pa.types.is_decimal(column.type):
                column = column.cast(pa.string())
            elif csv_safe and pa.types.is_string(column.type):
                column = _defused(column)
            columns.append(column)
        yield pa.record_batch(columns, names=batch.schema.names)


def _defused(column: pa.Array) -> pa.Array:
    """A leading ' on text that a spreadsheet would run as a formula (ids and model names are user-chosen)."""
    risky = pc.match_substring_regex(column, _FORMULA_START)
    return pc.if_else(risky, pc.binary_join_element_wise("'", column, ""), column)


def _write_csv(table: pa.Table, path: Path) -> None:
    import pyarrow.csv as pacsv

    schema = pa.schema([(n, pa.int64() if pa.types.is_integer(t) else pa.string())
                        for n, t in zip(table.column_names, table.schema.types, strict=True)])
    options = pacsv.WriteOptions(eol="\r\n")  # RFC 4180 line ends; text quoted, NULL an empty unquoted cell
    with pacsv.CSVWriter(str(path), schema, write_options=options) as writer:
        for batch in _text_batches(table, csv_safe=True):
            writer.write_batch(batch.cast(schema))


def _write_sqlite(table: pa.Table, spec: ExportSpec, path: Path, *, requests: int, micros: int) -> None:
    try:
        _write_sqlite_db(table, spec, path, requests=requests, micros=micros)
    except sqlite3.Error as e:  # e.g. disk full: an OSError for the caller, like the other formats
        raise OSError(f"writing the SQLite file failed: {e}") from e


def _write_sqlite_db(table: pa.Table, spec: ExportSpec, path: Path, *, requests: int, micros: int) -> None:
    import sqlite_utils

    path.unlink(missing_ok=True)
    db = sqlite_utils.Database(str(path))
    try:
        # A fresh file written once: no journal (a failed export is deleted whole by the caller).
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        columns = {n: int if pa.types.is_integer(t) else str for n, t in zip(table.column_names,
                                                                            table.schema.types, strict=True)}
        usage = db.table(SQLITE_TABLE)
        usage.create(columns)
        insert = f"INSERT INTO [{SQLITE_TABLE}] VALUES ({', '.join('?' * table.num_columns)})"
        with db.conn:  # one transaction; plain tuples (sqlite-utils' dict rows cost ~5x here)
            for batch in _text_batches(table, csv_safe=False):
                db.conn.executemany(insert, zip(*(c.to_pylist() for c in batch.columns), strict=True))
        c = _SQL_NAMES[spec.schema]
        usage.create_index([c["org"], c["day"]], index_name="idx_usage_daily_org_day")
        usage.create_index([c["model"]], index_name="idx_usage_daily_model")
        usage.create_index([c["key"]], index_name="idx_usage_daily_key")
        sums = (f"sum({c['requests']}) AS requests, sum({c['tokens']}) AS total_tokens, "
                f"sum({c['micros']}) AS cost_micros, round(sum({c['micros']}) / 1000000.0, 6) AS cost_usd")
        db.create_view("spend_by_org_month", f"SELECT {c['org']} AS org_id, {c['month']} AS month, {sums} "
                                             f"FROM {SQLITE_TABLE} GROUP BY 1, 2 ORDER BY 1, 2")
        db.create_view("spend_by_model", f"SELECT {c['model']} AS model, {c['environment']} AS environment, "
                                         f"{sums} FROM {SQLITE_TABLE} GROUP BY 1, 2 ORDER BY cost_micros DESC, 1, 2")
        db.create_view("spend_by_key", f"SELECT {c['org']} AS org_id, {c['key']} AS key_id, {sums} "
                                       f"FROM {SQLITE_TABLE} GROUP BY 1, 2 ORDER BY cost_micros DESC, 1, 2")
        db.table("export_info").insert({
            "schema": spec.schema, "range_start": _iso(spec.start), "range_end": _iso(spec.end),
            "org_id": spec.org, "generated_at": _iso(datetime.now(UTC).replace(microsecond=0)),
            "rows": table.num_rows, "requests": requests, "cost_micros": micros, "cost_usd": usd_text(micros),
            "currency": CURRENCY, "generator": SERVICE_NAME,
        })
    finally:
        db.close()


def _fsync_and_hash(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(f.fileno())
    return size, digest.hexdigest()


# -- small helpers --------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def _is_midnight(moment: datetime) -> bool:
    return moment.timetz().replace(tzinfo=None) == time(0)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _shown(value: object) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:40] + "…"
