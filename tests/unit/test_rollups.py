"""Hourly rollups: exact sums and counts against raw DuckDB whatever is rolled up, quantiles within 1 %,
late events, duplicates and compaction never double counted, idempotent rebuilds, local and S3 lakes."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from analytics_lake import rollup, sketch
from analytics_lake.compaction import compact
from analytics_lake.location import LakeConfig, open_lake
from analytics_lake.query import LakeQuery
from analytics_lake.report_args import ReportArgumentError
from analytics_lake.synthetic import make_event, synthetic_table
from analytics_lake.writer import write_batch, write_table

T0 = datetime(2026, 1, 5, 20, tzinfo=UTC)  # 8 hours over midnight: two days
T0_US = int(T0.timestamp() * 1_000_000)
HOUR_US = 3_600_000_000
NOW = T0 + timedelta(days=3)  # every hour below is closed
RAW_SUMS = ("count(*) AS requests, count(*) FILTER (WHERE status >= 400) AS errors, "
            "count(*) FILTER (WHERE status >= 500) AS server_errors, sum(prompt_tokens) AS prompt_tokens, "
            "sum(completion_tokens) AS completion_tokens, sum(cost_micros) AS cost_micros")
RAW_DIMS = {"org": "org_id", "key": "key_id", "model": "model", "environment": "environment", "release": "release",
            "status_class": f"({rollup.STATUS_CLASS_SQL}) AS status_class", "day": "dt AS day",
            "hour": "make_timestamptz((epoch_us(ts) // 3600000000) * 3600000000) AS hour"}
MEASURES = ("requests", "errors", "server_errors", "prompt_tokens", "completion_tokens", "cost_micros")


def _events(n: int, *, start_us: int = T0_US, span_h: int = 8, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        status = rng.choice((200,) * 20 + (429, 499, 400, 502, 503))
        event = make_event(start_us + rng.randrange(span_h * HOUR_US), org=f"org-{i % 3}", key=f"key-{i % 7}",
                           model=("m-a", "m-b")[i % 2], status=status, rng=rng)
        event["environment"] = ("production", "staging")[i % 5 == 0]
        event["release"] = ("stable", "canary")[i % 4 == 0]
        event["ttft_ms"] = event["ttft_ms"] if event["stream"] else None
        out.append(event)
    return out


@pytest.fixture
def lake(tmp_path):
    config = LakeConfig(f"file://{tmp_path}/lake")
    events = _events(4000)
    for i in range(0, len(events), 1000):  # several files per hour, as a live spool writes them
        write_batch(config, events[i:i + 1000], writer_id="w", seq=f"{i:06d}")
    return config


def _raw(q: LakeQuery, names: list[str], where: str = "") -> list[dict]:
    dims = ", ".join(RAW_DIMS[n] for n in names)
    cols = ", ".join(str(i + 1) for i in range(len(names)))  # by position: `hour` is also a partition column
    sql = f"SELECT {dims + ', ' if dims else ''}{RAW_SUMS} FROM usage{where}"
    sql += f" GROUP BY {cols} ORDER BY {cols}" if cols else ""
    rows = q.sql(sql).to_pylist()
    return [{k: int(v) if isinstance(v, Decimal) else v for k, v in r.items()} for r in rows]


def _rolled(q: LakeQuery, names: list[str], **kwargs) -> list[dict]:
    table = q.usage(names, **kwargs)
    return table.select([*(q_col(n) for n in names), *MEASURES]).to_pylist()


def q_col(name: str) -> str:
    return {"org": "org_id", "key": "key_id"}.get(name, name)


GROUPINGS = [[], ["org"], ["org", "day"], ["key", "model"], ["model", "environment", "release", "status_class"],
             ["org", "key", "model", "environment", "release", "status_class"], ["hour"], ["org", "hour", "model"]]


def test_rollups_equal_raw_aggregates_exactly_for_every_grouping(lake):
    report = rollup.update(lake, now=NOW)
    assert report["hours_built"] == 8 and report["days_packed"] == 2  # both days ended: packed
    with LakeQuery(lake) as q:
        q.refresh()
        assert q.rolled_hours == 8
        for names in GROUPINGS:
            assert _rolled(q, names) == _raw(q, names), names


@pytest.mark.parametrize(("since", "until"), [
    ("2026-01-05T21:17:00", "2026-01-06T02:05:00"),  # partial hours at both edges, hours of two packed days
    ("2026-01-05T00:00:00", "2026-01-06T00:00:00"),  # a whole packed day
    ("2026-01-05T20:00:00", "2026-01-05T23:00:00"),  # whole hours of a packed day only
    ("2026-01-05T22:30:00", "2026-01-05T22:50:00"),  # inside one hour: raw rows only
    ("2026-01-06T01:00:00", None),
    (None, "2026-01-05T22:00:01"),
])
def test_ranges_read_rollups_for_whole_hours_and_raw_rows_at_the_edges(lake, since, until):
    rollup.update(lake, now=NOW)
    where = []
    if since:
        where.append(f"ts >= TIMESTAMPTZ '{since}+00'")
    if until:
        where.append(f"ts < TIMESTAMPTZ '{until}+00'")
    with LakeQuery(lake) as q:
        for names in (["org", "day"], ["model", "status_class"], ["hour"]):
            assert _rolled(q, names, since=since, until=until) == _raw(q, names, " WHERE " + " AND ".join(where))


def test_late_events_and_compaction_are_never_double_counted(lake):
    rollup.update(lake, now=NOW)
    late = _events(300, start_us=T0_US + 2 * HOUR_US, span_h=1, seed=7)  # 22:00  # a late file in a rolled-up hour
    write_batch(lake, late, writer_id="late", seq="000001")
    with LakeQuery(lake) as q:
        q.refresh()
        assert q.rolled_hours == 7  # that hour is stale: read raw until rebuilt
        assert _rolled(q, ["org", "hour"]) == _raw(q, ["org", "hour"])
        assert rollup.status(lake, now=NOW)["stale"] == ["2026-01-05T22"]
        assert rollup.update(lake, now=NOW)["hours_built"] == 1
        q.refresh()
        assert q.rolled_hours == 8
        assert _rolled(q, ["org", "hour"]) == _raw(q, ["org", "hour"])
        compact(lake)  # files merged: every hour's fingerprint changes and its rollup is rebuilt
        q.refresh()
        assert q.rolled_hours == 8
        assert _rolled(q, ["org", "key", "day"]) == _raw(q, ["org", "key", "day"])
    # only current rollup files are left: one per cube per hour, one pack per cube per whole day
    lake_ = open_lake(lake)
    hours, days = rollup.list_rollups(lake_)
    assert all(len(h.by_fingerprint) == 1 for h in hours.values())
    assert all(len(d) == 1 for d in days.values())


def test_duplicates_from_a_redelivered_batch_are_counted_once(lake):
    events = _events(200, start_us=T0_US + 5 * HOUR_US, span_h=1, seed=9)
    write_batch(lake, events, writer_id="a", seq="000001")
    write_batch(lake, events[:50], writer_id="b", seq="000002")  # the stream writer wrote 50 twice
    rollup.update(lake, now=NOW)
    with LakeQuery(lake) as q:
        q.refresh()
        assert q.rolled_hours == 8
        rolled = _rolled(q, ["org", "model"])  # from rollups built over the hour with duplicates
        assert _raw(q, ["org", "model"]) != rolled  # the raw view still counts them twice
    compact(lake, rollups=False)  # compaction removes the duplicates from the raw files: the truth
    with LakeQuery(lake) as q:
        assert _raw(q, ["org", "model"]) == rolled


def test_quantiles_from_sketches_are_within_one_percent_of_exact(tmp_path):
    config = LakeConfig(f"file://{tmp_path}/lake")
    write_table(config, synthetic_table(200_000, start_us=T0_US, span_hours=3, orgs=4, keys=40), writer_id="s",
                seq="1")
    rollup.update(config, now=NOW)
    with LakeQuery(config) as q:
        q.refresh()
        assert q.rolled_hours == 3
        rel = {(r["model"], r["release"]): r for r in q.reliability(["model", "release"]).to_pylist()}
        exact = q.sql(
            "SELECT model, release, quantile_cont(latency_ms, [0.5, 0.95, 0.99]) AS l, "
            "quantile_cont(ttft_ms, [0.5, 0.95, 0.99]) AS t FROM usage WHERE status < 400 GROUP BY ALL").to_pylist()
        assert len(exact) == len(rel) == 10
        for row in exact:
            got = rel[(row["model"], row["release"])]
            for metric, values in (("latency", row["l"]), ("ttft", row["t"])):
                for p, want in zip((50, 95, 99), values, strict=True):
                    assert abs(got[f"{metric}_p{p}_ms"] - want) / want < 0.01, (row, metric, p)
        # the canned latency report (all requests) too, against exact quantiles by model
        fast = {r["model"]: r for r in q.latency(by="model").to_pylist()}
        for row in q.latency(by="model", exact=True).to_pylist():
            assert fast[row["model"]]["requests"] == row["requests"]
            for col in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "ttft_p99_ms"):
                assert abs(fast[row["model"]][col] - row[col]) / row[col] < 0.01


def test_availability_and_error_rates_by_class(lake):
    rollup.update(lake, now=NOW)
    with LakeQuery(lake) as q:
        rows = q.reliability(["model"]).to_pylist()
        raw = {r["model"]: r for r in q.sql(
            "SELECT model, count(*) AS n, count(*) FILTER (WHERE status = 429) AS n429, "
            "count(*) FILTER (WHERE status = 499) AS n499, count(*) FILTER (WHERE status >= 500) AS n5xx, "
            "count(*) FILTER (WHERE status >= 400 AND status < 500 AND status NOT IN (429, 499)) AS n4xx "
            "FROM usage GROUP BY ALL").to_pylist()}
    for row in rows:
        want = raw[row["model"]]
        eligible = want["n"] - want["n429"] - want["n499"] - want["n4xx"]
        assert (row["requests"], row["rate_limited"], row["cancelled"], row["server_errors"], row["client_errors"]) == \
            (want["n"], want["n429"], want["n499"], want["n5xx"], want["n4xx"])
        assert row["eligible"] == eligible
        assert row["availability"] == pytest.approx(1 - want["n5xx"] / eligible)
        assert row["error_rate_5xx"] == pytest.approx(want["n5xx"] / want["n"])


def test_slow_requests_are_counted_from_the_sketch(lake):
    rollup.update(lake, now=NOW)
    with LakeQuery(lake) as q:
        got = {(r["model"], r["environment"]): r for r in q.sli_counts(2000).to_pylist()}
        exact = q.sql("SELECT model, environment, count(*) FILTER (WHERE status < 400 AND latency_ms > 2000) AS slow, "
                      "count(*) FILTER (WHERE status < 400) AS ok FROM usage GROUP BY ALL").to_pylist()
    for row in exact:
        g = got[(row["model"], row["environment"])]
        assert g["ok"] == row["ok"]
        # a value within 0.5 % of the threshold may land on either side of it
        assert abs(g["slow"] - row["slow"]) <= 0.01 * row["ok"]
    with LakeQuery(lake) as q:  # a range with partial hours: raw rows and rollups together
        ranged = q.sli_counts(2000, ["model"], since="2026-01-05T21:30:00", until="2026-01-06T01:15:00").to_pylist()
        exact = q.sql("SELECT model, count(*) FILTER (WHERE status < 400) AS ok, count(*) FILTER (WHERE status >= 500) "
                      "AS server_errors FROM usage WHERE ts >= TIMESTAMPTZ '2026-01-05T21:30:00+00' AND "
                      "ts < TIMESTAMPTZ '2026-01-06T01:15:00+00' GROUP BY ALL ORDER BY ALL").to_pylist()
    assert [(r["model"], r["ok"], r["server_errors"]) for r in ranged] == \
        [(r["model"], r["ok"], r["server_errors"]) for r in exact]
    with pytest.raises(ReportArgumentError):
        LakeQuery(lake).sli_counts(0)


def test_rebuild_is_idempotent(lake):
    first = rollup.rebuild(lake, now=NOW)
    lake_ = open_lake(lake)
    names = sorted(info.path for info in lake_.fs.get_file_info(
        __import__("pyarrow.fs", fromlist=["FileSelector"]).FileSelector(rollup.rollup_root(lake_), recursive=True))
        if info.path.endswith(".parquet"))
    with LakeQuery(lake) as q:
        before = q.usage(["org", "key", "model", "hour"]).to_pylist()
        rel_before = q.reliability().to_pylist()
    second = rollup.rebuild(lake, now=NOW)
    assert first["hours_built"] == second["hours_built"] == 8
    names_after = sorted(info.path for info in lake_.fs.get_file_info(
        __import__("pyarrow.fs", fromlist=["FileSelector"]).FileSelector(rollup.rollup_root(lake_), recursive=True))
        if info.path.endswith(".parquet"))
    assert names == names_after
    with LakeQuery(lake) as q:
        assert q.usage(["org", "key", "model", "hour"]).to_pylist() == before
        assert q.reliability().to_pylist() == rel_before
    assert rollup.update(lake, now=NOW)["hours_built"] == 0


def test_current_hour_is_not_rolled_up_and_reads_raw(tmp_path):
    config = LakeConfig(f"file://{tmp_path}/lake")
    now = datetime.now(UTC)
    write_batch(config, [make_event(int(now.timestamp() * 1e6) - i) for i in range(10)])
    assert rollup.update(config)["hours_built"] == 0
    assert rollup.status(config)["lag_s"] in (None, 0.0)
    with LakeQuery(config) as q:
        assert q.usage([])["requests"].to_pylist() == [10]


def test_org_scoped_session_sees_only_its_org(lake):
    rollup.update(lake, now=NOW)
    with LakeQuery(lake, org="org-1") as q:
        orgs = {r["org_id"] for r in q.usage(["org", "model"]).to_pylist()}
        assert orgs == {"org-1"}
        total = q.usage([]).to_pylist()[0]["requests"]
        assert total == sum(r["requests"] for r in q.reliability(["model"]).to_pylist())
    with LakeQuery(lake) as q:
        assert total == q.usage([], org="org-1").to_pylist()[0]["requests"]


@pytest.mark.parametrize("bad", [["org", "org"], ["endpoint"], "org,nope", ["a"] * 7])
def test_bad_group_by_names_the_argument(lake, bad):
    with LakeQuery(lake) as q, pytest.raises(ReportArgumentError) as e:
        q.usage(bad)
    assert e.value.argument == "group_by"


def test_bad_filters_and_ranges_name_the_argument(lake):
    with LakeQuery(lake) as q:
        for kwargs, argument in (({"filters": {"endpoint": "x"}}, "endpoint"),
                                 ({"filters": {"status_class": "3xx"}}, "status_class"),
                                 ({"since": "2026-01-05", "until": "2026-01-04"}, "until"),
                                 ({"limit": 0}, "limit")):
            with pytest.raises(ReportArgumentError) as e:
                q.usage(["org"], **kwargs)
            assert e.value.argument == argument, kwargs


def test_paging_is_stable(lake):
    rollup.update(lake, now=NOW)
    with LakeQuery(lake) as q:
        whole = q.usage(["org", "key", "hour"]).to_pylist()
        pages = [q.usage(["org", "key", "hour"], limit=37, offset=o).to_pylist() for o in range(0, len(whole), 37)]
    assert list(itertools.chain.from_iterable(pages)) == whole


def test_s3_lake_rollups_match_raw(s3_server, s3_bucket):
    config = LakeConfig(f"s3://{s3_bucket}/lake", s3_endpoint=s3_server.endpoint, s3_access_key="test",
                        s3_secret_key="test")
    events = _events(1500, start_us=T0_US + 2 * HOUR_US, span_h=4)
    write_batch(config, events[:1000], writer_id="w", seq="1")
    write_batch(config, events[1000:], writer_id="w", seq="2")
    report = rollup.update(config, now=NOW)
    assert report["hours_built"] == 4 and report["days_packed"] == 2
    with LakeQuery(config) as q:
        q.refresh()
        assert q.rolled_hours == 4
        for names in (["org", "day"], ["model", "status_class"]):
            assert _rolled(q, names) == _raw(q, names)
            assert _rolled(q, names, since="2026-01-05T23:30:00") == _raw(
                q, names, " WHERE ts >= TIMESTAMPTZ '2026-01-05T23:30:00+00'")


def test_sketch_math():
    assert sketch.quantile({}, 0.5) is None
    for x in (0.002, 0.7, 1.0, 13.3, 999.9, 4321.0, 1e6):
        b = sketch.bucket_of(x)
        assert sketch.GAMMA ** (b - 1) < x <= sketch.GAMMA ** b * (1 + 1e-12)
        assert abs(sketch.value_of(b) - x) / x <= sketch.ALPHA + 1e-12
    a, b = {1: 2, 5: 1}, {5: 3, 9: 1}
    assert sketch.merge(a, b) == sketch.merge(b, a) == {1: 2, 5: 4, 9: 1}
    values = [random.Random(3).uniform(1, 5000) for _ in range(1)] + [float(i) for i in range(1, 1001)]
    counts: dict[int, int] = {}
    for v in values:
        counts[sketch.bucket_of(v)] = counts.get(sketch.bucket_of(v), 0) + 1
    ordered = sorted(values)
    for q in (0.5, 0.9, 0.99):
        want = ordered[sketch.rank_of(q, len(values))]
        assert abs(sketch.quantile(counts, q) - want) / want <= sketch.ALPHA + 1e-9
    with pytest.raises(ValueError):
        sketch.quantile(counts, 1.0)


async def test_the_spool_flush_keeps_rollups_current(tmp_path):
    from analytics_lake.spool import SpoolSink
    from tests.support import eventually

    config = LakeConfig(f"file://{tmp_path}/lake")
    sink = SpoolSink(tmp_path / "spool" / "w1", config, "w1", flush_interval_s=0.1, rollups=True)
    await sink.start()
    try:
        for event in _events(300, span_h=2):  # two closed hours
            await sink.emit(event)

        async def rolled() -> bool:
            return rollup.status(config)["rolled_up"] == 2
        await eventually(rolled, timeout=20, what="the flush loop's rollup of two closed hours")
    finally:
        await sink.close()
    with LakeQuery(config) as q:
        assert _rolled(q, ["org", "hour"]) == _raw(q, ["org", "hour"])
