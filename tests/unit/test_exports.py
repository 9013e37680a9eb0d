"""Finance exports over a small real lake: every format × schema sums to the lake's exact micro-dollars.

Also UTC day boundaries, the org filter, empty ranges, CSV injection, FOCUS columns and types, the SQLite
indexes and views, argument validation and file names.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import sqlite3
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analytics_lake import rollup
from analytics_lake.exports import (
    FOCUS_COLUMNS,
    FORMATS,
    SCHEMAS,
    ExportSpec,
    export_table,
    spec_from_args,
    spec_from_dict,
    usd_text,
    write_export,
)
from analytics_lake.location import LakeConfig
from analytics_lake.query import LakeQuery
from analytics_lake.report_args import ReportArgumentError
from analytics_lake.synthetic import make_event
from analytics_lake.writer import write_batch

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
FEB_1 = 1_769_904_000_000_000  # 2026-02-01T00:00:00Z
ACME, GLOBEX = "org_00000000000000ac", "org_0000000000000b0b"
JANUARY = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
MICROS = {"fleetgate": "cost_micros", "focus": "x_CostMicros"}
USD = {"fleetgate": "cost_usd", "focus": "BilledCost"}
REQUESTS = {"fleetgate": "requests", "focus": "x_Requests"}


@pytest.fixture(scope="module")
def events() -> list[dict]:
    """Three days of January for two orgs, user-chosen names that look like formulas, and the last
    microsecond of January next to the first of February."""
    rng = random.Random(13)
    out = []
    for i in range(240):
        org = (ACME, GLOBEX)[i % 2]
        key = ("=HYPERLINK(\"http://x\")", "+ops", "-batch", "@team", "plain")[i % 5]
        out.append(make_event(T0 + (i % 3) * DAY_US + (i % 4) * 5 * HOUR_US + i, org=org, key=f"{key}",
                              model=("m1", "m2", "m3")[i % 3], status=(200, 200, 502, 429)[i % 4], rng=rng))
    out.append({**make_event(FEB_1 - 1, org=ACME, key="late", rng=rng), "cost_micros": 1_000_001})
    out.append({**make_event(FEB_1, org=ACME, key="early", rng=rng), "cost_micros": 2_000_003})
    return out


def _lake(directory: Path, events: list[dict], *, rolled_up: bool) -> LakeConfig:
    config = LakeConfig(f"file://{directory}/lake")
    write_batch(config, events[::2], writer_id="w", seq="1")
    write_batch(config, events[1::2], writer_id="w", seq="2")
    if rolled_up:  # every hour is closed by March: reports read the rollups for them
        rollup.rebuild(config, now=datetime(2026, 3, 1, tzinfo=UTC))
    return config


@pytest.fixture(scope="module")
def lake(tmp_path_factory, events) -> LakeConfig:
    """The events in two writes, raw files only."""
    return _lake(tmp_path_factory.mktemp("raw"), events, rolled_up=False)


@pytest.fixture(scope="module")
def rolled_up_lake(tmp_path_factory, events) -> LakeConfig:
    """The same events, with every hour rolled up."""
    return _lake(tmp_path_factory.mktemp("rolled"), events, rolled_up=True)


@pytest.fixture(scope="module")
def raw_q(lake):
    with LakeQuery(lake, max_age_s=3600) as query:  # the lake does not change: one session for the module
        yield query


@pytest.fixture(scope="module")
def rolled_up_q(rolled_up_lake):
    with LakeQuery(rolled_up_lake, max_age_s=3600) as query:
        query.refresh()
        assert query.rolled_hours > 0  # whole hours really come from rollups here
        yield query


@pytest.fixture(params=["raw", "rollups"])
def q(request):
    """A query session over each lake: exports must be the same whether hours come from rollups or raw rows."""
    return request.getfixturevalue("raw_q" if request.param == "raw" else "rolled_up_q")


def lake_micros(q: LakeQuery, start: datetime, end: datetime, org: str | None = None) -> int:
    """The lake's own exact sum, straight from the raw rows."""
    where = f"ts >= TIMESTAMPTZ '{start.isoformat()}' AND ts < TIMESTAMPTZ '{end.isoformat()}'"
    if org:
        where += f" AND org_id = '{org}'"
    table = q.sql(f"SELECT CAST(coalesce(sum(cost_micros), 0) AS BIGINT) AS m FROM usage WHERE {where}")
    return table.column("m")[0].as_py()


def read_rows(path: Path, fmt: str) -> list[dict]:
    if fmt == "csv":
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    if fmt == "parquet":
        return pq.read_table(path).to_pylist()
    con = sqlite3.connect(path)
    try:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT * FROM usage_daily")]
    finally:
        con.close()


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("org", [None, ACME])
def test_totals_equal_the_lakes_exact_sums(q, events, tmp_path, fmt, schema, org):
    spec = spec_from_args(month="2026-01", org=org, format=fmt, schema=schema)
    path = tmp_path / spec.filename()
    result = write_export(q, spec, path)

    expected = [e for e in events if e["ts"] < FEB_1 and org in (None, e["org_id"])]
    micros = sum(e["cost_micros"] for e in expected)
    assert micros == lake_micros(q, *JANUARY, org) > 0
    rows = read_rows(path, fmt)
    assert sum(int(r[MICROS[schema]]) for r in rows) == micros == result.cost_micros
    assert sum(Decimal(str(r[USD[schema]])) for r in rows) == Decimal(micros) / 1_000_000  # exact, not floats
    assert sum(int(r[REQUESTS[schema]]) for r in rows) == len(expected) == result.requests
    assert len(rows) == result.rows == len({(e["org_id"], e["ts"] // DAY_US, e["key_id"], e["model"])
                                            for e in expected})
    data = path.read_bytes()
    assert result.bytes == len(data) and result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.cost_usd == usd_text(micros)


def test_days_are_utc_days_and_the_range_end_is_exclusive(q, tmp_path):
    january = export_table(q, spec_from_args(month="2026-01", org=ACME)).to_pylist()
    last = [r for r in january if r["day"] == date(2026, 1, 31)]
    assert [(r["key_id"], r["cost_micros"]) for r in last] == [("late", 1_000_001)]  # 23:59:59.999999
    assert all(r["key_id"] != "early" for r in january)
    february = export_table(q, spec_from_args(month="2026-02", org=ACME)).to_pylist()
    assert [(r["day"], r["key_id"], r["cost_micros"]) for r in february] == [(date(2026, 2, 1), "early", 2_000_003)]
    assert {r["period_start"] for r in february} == {datetime(2026, 2, 1, tzinfo=UTC)}
    # A range that starts and ends mid-day: FOCUS charge periods are clipped to it.
    start, end = datetime(2026, 1, 2, 6, tzinfo=UTC), datetime(2026, 1, 3, 12, tzinfo=UTC)
    focus = export_table(q, spec_from_args(since=start.isoformat(), until=end.isoformat(), schema="focus"))
    periods = {(r["ChargePeriodStart"], r["ChargePeriodEnd"]) for r in focus.to_pylist()}
    assert periods == {(start, datetime(2026, 1, 3, tzinfo=UTC)), (datetime(2026, 1, 3, tzinfo=UTC), end)}
    assert sum(focus.column("x_CostMicros").to_pylist()) == lake_micros(q, start, end)


def test_org_filter_exports_only_that_org(raw_q):
    table = export_table(raw_q, spec_from_args(month="2026-01", org=GLOBEX))
    assert table.num_rows > 0 and set(table.column("org_id").to_pylist()) == {GLOBEX}
    focus = export_table(raw_q, spec_from_args(month="2026-01", org=GLOBEX, schema="focus"))
    assert set(focus.column("SubAccountId").to_pylist()) == {GLOBEX}
    assert {json.loads(t)["org"] for t in focus.column("Tags").to_pylist()} == {GLOBEX}
    assert export_table(raw_q, spec_from_args(month="2026-01", org="org_ffffffffffffffff")).num_rows == 0


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_an_empty_range_is_a_valid_file_with_no_rows(raw_q, tmp_path, fmt, schema):
    spec = spec_from_args(month="2025-06", format=fmt, schema=schema)
    path = tmp_path / spec.filename()
    result = write_export(raw_q, spec, path)
    assert (result.rows, result.requests, result.cost_micros) == (0, 0, 0)
    if fmt == "csv":
        with path.open(newline="") as f:
            assert list(csv.reader(f)) == [list(spec_columns(schema))]
    elif fmt == "parquet":
        table = pq.read_table(path)
        assert table.num_rows == 0 and table.column_names == list(spec_columns(schema))
    else:
        con = sqlite3.connect(path)
        try:
            assert con.execute("SELECT count(*) FROM usage_daily").fetchone() == (0,)
            assert con.execute("SELECT count(*) FROM spend_by_org_month").fetchone() == (0,)
            assert con.execute("SELECT rows, cost_micros FROM export_info").fetchone() == (0, 0)
        finally:
            con.close()


def spec_columns(schema: str) -> tuple[str, ...]:
    from analytics_lake.exports import COLUMNS

    return tuple(COLUMNS[schema])


def test_csv_is_rfc4180_and_formula_safe(raw_q, tmp_path):
    spec = spec_from_args(month="2026-01", org=ACME)
    path = tmp_path / "x.csv"
    write_export(raw_q, spec, path)
    raw = path.read_bytes()
    assert raw.count(b"\r\n") == raw.count(b"\n")  # CRLF line ends
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    keys = {r["key_id"] for r in rows}
    assert keys == {"'=HYPERLINK(\"http://x\")", "'+ops", "'-batch", "'@team", "plain", "late"}
    row = rows[0]
    assert (row["period_start"], row["period_end"], row["day"]) == ("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z",
                                                                    "2026-01-01")
    assert row["currency"] == "USD" and row["cost_usd"] == usd_text(int(row["cost_micros"]))
    assert int(row["total_tokens"]) == int(row["prompt_tokens"]) + int(row["completion_tokens"])
    # Parquet and SQLite keep the values as they are (no spreadsheet runs them).
    write_export(raw_q, spec_from_args(month="2026-01", org=ACME, format="parquet"), tmp_path / "x.parquet")
    assert "=HYPERLINK(\"http://x\")" in pq.read_table(tmp_path / "x.parquet").column("key_id").to_pylist()


def test_rows_are_ordered_and_files_deterministic(raw_q, tmp_path):
    for fmt in ("csv", "parquet"):
        spec = spec_from_args(month="2026-01", format=fmt, schema="focus")
        first = write_export(raw_q, spec, tmp_path / f"a.{fmt}")
        assert write_export(raw_q, spec, tmp_path / f"b.{fmt}").sha256 == first.sha256
    table = export_table(raw_q, spec_from_args(month="2026-01"))
    keys = [(r["org_id"], r["day"], r["key_id"], r["model"], r["environment"]) for r in table.to_pylist()]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


def test_focus_columns_are_present_and_typed(raw_q, tmp_path):
    spec = spec_from_args(month="2026-01", org=ACME, format="parquet", schema="focus")
    path = tmp_path / spec.filename()
    write_export(raw_q, spec, path)
    table = pq.read_table(path)
    schema = table.schema
    for name in ("BilledCost", "EffectiveCost", "ListCost", "PricingQuantity"):
        assert schema.field(name).type == pa.decimal128(38, 6), name
    for name in ("ChargePeriodStart", "ChargePeriodEnd", "BillingPeriodStart", "BillingPeriodEnd"):
        assert schema.field(name).type == pa.timestamp("us", tz="UTC"), name
    assert schema.field("ConsumedQuantity").type == pa.int64()
    for name in ("BillingCurrency", "ChargeCategory", "ChargeDescription", "ServiceName", "ServiceCategory",
                 "ProviderName", "PublisherName", "InvoiceIssuerName", "ResourceId", "ResourceName",
                 "ConsumedUnit", "PricingUnit", "SubAccountId", "Tags", "BillingAccountId", "ChargeFrequency"):
        assert schema.field(name).type == pa.string(), name
        assert table.column(name).null_count == 0, name
    assert [f.name for f in schema] == list(FOCUS_COLUMNS)
    assert json.loads(schema.metadata[b"fleetgate.export"])["org"] == ACME
    rows = table.to_pylist()
    row = next(r for r in rows if r["x_KeyId"] == "plain")
    assert row["BilledCost"] == row["EffectiveCost"] == row["ListCost"] == Decimal(row["x_CostMicros"]) / 10**6
    assert (row["BillingCurrency"], row["ChargeCategory"], row["ServiceCategory"], row["ConsumedUnit"]) == (
        "USD", "Usage", "AI and Machine Learning", "Tokens")
    assert (row["ServiceName"], row["ProviderName"]) == ("Fleetgate LLM Gateway", "Fleetgate")
    assert row["ResourceId"] == f"model/production/{row['ResourceName']}"
    assert row["ConsumedQuantity"] == row["x_PromptTokens"] + row["x_CompletionTokens"]
    assert row["PricingQuantity"] == Decimal(row["ConsumedQuantity"]) / 10**6
    assert (row["BillingPeriodStart"], row["BillingPeriodEnd"]) == JANUARY
    assert row["ChargePeriodEnd"] - row["ChargePeriodStart"] == timedelta(days=1)
    assert json.loads(row["Tags"]) == {"org": ACME, "key": "plain", "model": row["ResourceName"],
                                       "environment": "production"}


@pytest.mark.parametrize("schema", SCHEMAS)
def test_sqlite_has_indexes_views_and_export_info(raw_q, tmp_path, schema):
    spec = spec_from_args(month="2026-01", format="sqlite", schema=schema)
    path = tmp_path / spec.filename()
    result = write_export(raw_q, spec, path)
    con = sqlite3.connect(path)
    try:
        indexed = {tuple(c[2] for c in con.execute(f"PRAGMA index_info('{name}')"))
                   for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert indexed == ({("org_id", "day"), ("model",), ("key_id",)} if schema == "fleetgate" else
                           {("SubAccountId", "ChargePeriodStart"), ("ResourceName",), ("x_KeyId",)})
        views = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'view'")}
        assert views == {"spend_by_org_month", "spend_by_model", "spend_by_key"}
        for view in views:
            micros, usd, requests = con.execute(
                f"SELECT sum(cost_micros), sum(cost_usd), sum(requests) FROM {view}").fetchone()
            assert micros == result.cost_micros == lake_micros(raw_q, *JANUARY)
            assert usd == pytest.approx(micros / 1e6) and requests == result.requests
        by_org = con.execute("SELECT org_id, month, cost_micros FROM spend_by_org_month").fetchall()
        assert by_org == [(org, "2026-01", lake_micros(raw_q, *JANUARY, org)) for org in (ACME, GLOBEX)]
        info = dict(zip(("schema", "range_start", "range_end", "org_id", "rows", "cost_micros", "cost_usd"),
                        con.execute("SELECT schema, range_start, range_end, org_id, rows, cost_micros, cost_usd "
                                    "FROM export_info").fetchone(), strict=True))
        assert info == {"schema": schema, "range_start": "2026-01-01T00:00:00Z", "range_end": "2026-02-01T00:00:00Z",
                        "org_id": None, "rows": result.rows, "cost_micros": result.cost_micros,
                        "cost_usd": result.cost_usd}
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        con.close()


def test_write_export_replaces_an_existing_file(raw_q, tmp_path):
    path = tmp_path / "x.sqlite"
    path.write_bytes(b"not a database")
    result = write_export(raw_q, spec_from_args(month="2026-01", format="sqlite"), path)
    con = sqlite3.connect(path)
    try:
        assert con.execute("SELECT count(*) FROM usage_daily").fetchone() == (result.rows,)
    finally:
        con.close()


NOW = datetime(2026, 3, 10, 15, 30, tzinfo=UTC)


@pytest.mark.parametrize("kwargs, argument", [
    ({}, "month"),
    ({"month": "2026-13"}, "month"),
    ({"month": "March"}, "month"),
    ({"month": "2026-03", "since": "2026-03-01"}, "month"),
    ({"month": "2026-03", "until": "2026-03-05"}, "until"),
    ({"since": "yesterday"}, "since"),
    ({"since": "2026-03-01", "until": "soon"}, "until"),
    ({"since": "2026-03-05", "until": "2026-03-01"}, "until"),
    ({"since": "2026-03-05T00:00:00", "until": "2026-03-05T00:00:00"}, "until"),
    ({"since": "2024-01-01", "until": "2026-01-01"}, "until"),  # more than a year
    ({"since": "900d"}, "until"),
    ({"month": "2026-03", "format": "xlsx"}, "format"),
    ({"month": "2026-03", "schema": "cur"}, "schema"),
    ({"month": "2026-03", "org": " "}, "org"),
])
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ReportArgumentError) as e:
        spec_from_args(now=NOW, **kwargs)
    assert e.value.argument == argument


def test_arguments_make_the_expected_ranges():
    march = spec_from_args(month="2026-03", now=NOW)
    assert (march.start, march.end) == (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
    december = spec_from_args(month="2026-12", now=NOW)
    assert december.end == datetime(2027, 1, 1, tzinfo=UTC)
    dates = spec_from_args(since="2026-03-01", until="2026-03-15", now=NOW)  # a bare until date is included
    assert (dates.start, dates.end) == (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 16, tzinfo=UTC))
    recent = spec_from_args(since="7d", now=NOW, format="PARQUET", schema="focus")
    assert (recent.start, recent.end, recent.format, recent.schema) == (NOW - timedelta(days=7), NOW, "parquet",
                                                                        "focus")
    offset = spec_from_args(since="2026-03-01T02:00:00+02:00", until=datetime(2026, 3, 2), now=NOW)
    assert (offset.start, offset.end) == (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
    assert spec_from_args(since="2025-03-10", now=NOW).end == NOW  # a year exactly (plus a leap day) is allowed
    assert spec_from_dict(dates.as_dict()) == dates
    with pytest.raises(ReportArgumentError):
        ExportSpec(org=None, start=datetime(2026, 3, 1), end=datetime(2026, 3, 2))  # naive datetimes


@pytest.mark.parametrize("kwargs, name", [
    ({"month": "2026-03", "org": "acme"}, "usage-acme-2026-03.csv"),
    ({"month": "2026-03", "format": "parquet", "schema": "focus"}, "usage-all-2026-03.focus.parquet"),
    ({"since": "2026-03-01", "until": "2026-03-15", "format": "parquet", "schema": "focus"},
     "usage-all-2026-03-01_2026-03-15.focus.parquet"),
    ({"since": "2026-03-01", "until": "2026-03-01", "format": "sqlite"}, "usage-all-2026-03-01_2026-03-01.sqlite"),
    ({"since": "2026-02-01", "until": "2026-03-31"}, "usage-all-2026-02-01_2026-03-31.csv"),
    ({"since": "2026-03-01T06:30:00Z", "until": "2026-03-02T00:00:00Z"},
     "usage-all-20260301T063000Z_20260302T000000Z.csv"),
    ({"month": "2026-03", "org": "../../etc/pass wd"}, "usage-etc_pass_wd-2026-03.csv"),
    ({"month": "2026-03", "org": "..."}, "usage-org-2026-03.csv"),
])
def test_file_names_are_safe_and_say_what_is_inside(kwargs, name):
    assert spec_from_args(now=NOW, **kwargs).filename() == name


def test_usd_text_is_exact():
    assert [usd_text(m) for m in (0, 1, 999_999, 1_000_000, 123_456_789, -5)] == [
        "0.000000", "0.000001", "0.999999", "1.000000", "123.456789", "-0.000005"]
