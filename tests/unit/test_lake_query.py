"""Reports over a small real lake: exact numbers, org scoping, empty lake, bad arguments."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from analytics_lake.errors import LakeInputError
from analytics_lake.location import LakeConfig
from analytics_lake.query import LakeQuery
from analytics_lake.report_args import month_range, parse_since
from analytics_lake.synthetic import make_event
from analytics_lake.writer import write_batch

DAY_US = 86_400_000_000
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


@pytest.fixture
def events():
    rng = random.Random(7)
    out = []
    for i in range(300):
        org = ("acme", "globex", "initech")[i % 3]
        out.append(make_event(T0 + (i % 3) * DAY_US + i * 1000, org=org, key=f"{org}-k{i % 2}",
                              model=("m1", "m2")[i % 2], status=502 if i % 10 == 0 else 200, rng=rng))
    return out


@pytest.fixture
def lake(tmp_path, events):
    config = LakeConfig(f"file://{tmp_path}/lake")
    write_batch(config, events[:150], writer_id="w", seq="1")
    write_batch(config, events[150:], writer_id="w", seq="2")
    return config


def test_spend_by_org_is_exact(lake, events):
    with LakeQuery(lake) as q:
        rows = {r["org_id"]: r for r in q.spend(by="org").to_pylist()}
    for org in ("acme", "globex", "initech"):
        mine = [e for e in events if e["org_id"] == org]
        assert rows[org]["requests"] == len(mine)
        assert rows[org]["cost_usd"] == Decimal(sum(e["cost_micros"] for e in mine)) / Decimal(1_000_000)
        assert rows[org]["prompt_tokens"] == sum(e["prompt_tokens"] for e in mine)


def test_reports_scoped_to_an_org_never_return_other_orgs(lake):
    with LakeQuery(lake) as q:
        for table in (q.spend(by="key", org="acme"), q.spend(by="day", org="acme"), q.top_keys(10, org="acme"),
                      q.export_month("2026-01", org="acme")):
            assert table.num_rows > 0
            if "org_id" in table.column_names:
                assert set(table.column("org_id").to_pylist()) == {"acme"}
            if "key_id" in table.column_names:
                assert all(k.startswith("acme-") for k in table.column("key_id").to_pylist())
        assert sum(q.latency(by="model", org="acme").column("requests").to_pylist()) == 100
    with LakeQuery(lake, org="acme") as scoped:
        assert scoped.sql("SELECT DISTINCT org_id FROM usage").column(0).to_pylist() == ["acme"]
        assert scoped.spend(by="org", org="globex").num_rows == 0  # scope wins over the argument
        assert sum(scoped.errors(by="model").column("requests").to_pylist()) == 100


def test_latency_errors_and_export_shapes(lake, events):
    with LakeQuery(lake) as q:
        lat = {r["model"]: r for r in q.latency(by="model").to_pylist()}
        assert set(lat) == {"m1", "m2"}
        assert lat["m1"]["latency_p50_ms"] <= lat["m1"]["latency_p95_ms"] <= lat["m1"]["latency_p99_ms"]
        assert lat["m1"]["ttft_p50_ms"] <= lat["m1"]["ttft_p99_ms"]
        p95 = q.latency(by="endpoint", percentiles=(0.95,), ttft=False)
        assert p95.column_names == ["endpoint", "requests", "latency_p95_ms"]
        errs = {r["model"]: r for r in q.errors(by="model").to_pylist()}
        assert errs["m1"]["errors"] == sum(1 for e in events if e["model"] == "m1" and e["status"] >= 400)
        export = q.export_month("2026-01").to_pylist()
        assert len(export) == len({(e["org_id"], e["ts"] // DAY_US, e["model"]) for e in events})
        assert sum(r["requests"] for r in export) == 300
        assert export[0]["day"] == date(2026, 1, 1)
        assert q.export_month("2026-02").num_rows == 0
        assert q.freshness().column("rows")[0].as_py() == 300


def test_since_filters_rows(lake):
    with LakeQuery(lake) as q:
        by_day = q.spend(by="day", since=datetime(2026, 1, 2, tzinfo=UTC)).column("day").to_pylist()
    assert by_day == [date(2026, 1, 2), date(2026, 1, 3)]


def test_empty_lake_gives_empty_results(tmp_path):
    with LakeQuery(LakeConfig(f"file://{tmp_path}/empty")) as q:
        assert q.spend(by="org").num_rows == 0
        assert q.latency(by="model").num_rows == 0
        assert q.sql("SELECT count(*) FROM usage").column(0).to_pylist() == [0]
        assert q.freshness().column("lag_s").to_pylist() == [None]


def test_new_files_show_up_after_refresh(tmp_path, events):
    config = LakeConfig(f"file://{tmp_path}/lake")
    with LakeQuery(config, max_age_s=3600) as q:
        assert q.sql("SELECT count(*) FROM usage").column(0)[0].as_py() == 0
        write_batch(config, events[:5], writer_id="w")
        q.refresh()
        assert q.sql("SELECT count(*) FROM usage").column(0)[0].as_py() == 5


@pytest.mark.parametrize("call", [
    lambda q: q.spend(by="nope"),
    lambda q: q.latency(by="cost"),
    lambda q: q.spend(by="org", since="7x"),
    lambda q: q.export_month("2026-13"),
    lambda q: q.export_month("January"),
    lambda q: q.top_keys(0),
    lambda q: q.latency(percentiles=(95,)),
    lambda q: q.sql("SELECT no_such_column FROM usage"),
])
def test_bad_report_arguments_are_input_errors(lake, call):
    with LakeQuery(lake) as q, pytest.raises(LakeInputError):
        call(q)


def test_argument_parsers():
    now = datetime(2026, 3, 10, tzinfo=UTC)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("2026-03-01", now) == datetime(2026, 3, 1, tzinfo=UTC)
    assert month_range("2026-12") == (date(2026, 12, 1), date(2027, 1, 1))
