"""Reports over a date range: `until` is an exclusive end (a bare date includes its whole day), validated
like `since`, and a reversed range is bad input naming `until`."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from analytics_lake.location import LakeConfig
from analytics_lake.query import LakeQuery
from analytics_lake.report_args import ReportArgumentError, parse_until, until_bound
from analytics_lake.synthetic import make_event
from analytics_lake.writer import write_batch

DAY_US = 86_400_000_000
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


@pytest.fixture
def lake(tmp_path):
    """Ten requests a day on 2026-01-01 … 2026-01-05 for org 'acme'."""
    rng = random.Random(3)
    config = LakeConfig(f"file://{tmp_path}/lake")
    events = [make_event(T0 + day * DAY_US + i * 60_000_000, org="acme", rng=rng) for day in range(5) for i in range(10)]
    write_batch(config, events, writer_id="w", seq="1")
    return config


def _requests(table) -> int:
    return sum(table.column("requests").to_pylist())


def test_until_is_exclusive_and_a_date_includes_its_day(lake):
    with LakeQuery(lake) as q:
        assert _requests(q.spend(since="2026-01-02", until="2026-01-03")) == 20
        assert _requests(q.spend(until=datetime(2026, 1, 3, tzinfo=UTC))) == 20
        assert _requests(q.latency(since="2026-01-05", until="2026-01-05")) == 10
        assert _requests(q.errors(until="2026-01-01T00:05:00")) == 5
        assert q.top_keys(since="2026-01-01", until="2026-01-01").column("requests").to_pylist() == [10]


def test_reports_without_until_are_unchanged(lake):
    with LakeQuery(lake) as q:
        assert _requests(q.spend(since="2026-01-01")) == 50
        assert _requests(q.spend()) == 50


def test_by_day_over_a_range_lists_only_its_days(lake):
    with LakeQuery(lake) as q:
        days = q.spend(by="day", since="2026-01-02", until="2026-01-04").column("day").to_pylist()
    assert [d.isoformat() for d in days] == ["2026-01-02", "2026-01-03", "2026-01-04"]


@pytest.mark.parametrize("kwargs", [
    {"until": "tomorrow"},
    {"until": "x" * 200},
    {"until": "1969-12-31"},
    {"until": "9999-12-31"},
    {"since": "2026-01-03", "until": "2026-01-02"},
    {"since": "2026-01-03T00:00:00", "until": "2026-01-03T00:00:00"},
])
def test_bad_until_is_an_input_error_naming_until(lake, kwargs):
    with LakeQuery(lake) as q, pytest.raises(ReportArgumentError) as caught:
        q.spend(**kwargs)
    assert caught.value.argument == "until"
    assert "until" in str(caught.value)


def test_parse_until_relative_and_absolute():
    now = datetime(2026, 3, 10, 12, tzinfo=UTC)
    assert parse_until("1d", now) == now - timedelta(days=1)
    assert parse_until("2026-03-01", now) == datetime(2026, 3, 2, tzinfo=UTC)
    assert parse_until("2026-03-01T06:00:00+01:00", now) == datetime(2026, 3, 1, 5, tzinfo=UTC)
    assert until_bound(datetime(2026, 3, 1)) == datetime(2026, 3, 1, tzinfo=UTC)
    with pytest.raises(ReportArgumentError):
        until_bound(timedelta(days=-1))
