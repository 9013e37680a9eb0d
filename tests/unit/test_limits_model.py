"""Limits building blocks: rule/policy validation, UTC periods, GCRA arithmetic, OpenAI headers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.errors import InvalidRequest
from gateway.limits import BudgetRule, LimitPolicy, LocalLimiter
from gateway.limits.gcra import WINDOW_MS, admit, backlog, correct, remaining
from gateway.limits.headers import Reading, duration, ratelimit_headers, retry_headers
from gateway.limits.keyspace import KeySpace
from gateway.limits.periods import PeriodCalendar, period_window
from gateway.store.models import Budget


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scope": "team"}, "scope"),
        ({"period": "weekly"}, "period"),
        ({"limit_micros": -1}, "limit_micros"),
        ({"soft_limit_pct": 101}, "soft_limit_pct"),
        ({"scope_id": "o{1}"}, "scope_id"),
        ({"scope": "key"}, "org_id"),
    ],
)
def test_bad_budget_rules_are_refused(kwargs, message):
    args = {"scope": "org", "scope_id": "o1", "limit_micros": 100, "period": "daily", **kwargs}
    with pytest.raises(InvalidRequest, match=message):
        BudgetRule(**args)


def test_budget_rule_from_a_stored_budget():
    now = datetime(2031, 1, 1, tzinfo=UTC)
    org = Budget("b1", "o1", None, 5_000_000, "monthly", 90, now, now)
    key = Budget("b2", "o1", "k1", 1_000, "daily", 0, now, now)
    assert BudgetRule.from_budget(org) == BudgetRule("org", "o1", 5_000_000, "monthly", 90, "o1")
    assert BudgetRule.from_budget(key) == BudgetRule("key", "k1", 1_000, "daily", 0, "o1")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"key_rpm": 0},
        {"org_tpm": -5},
        {"key_rpm": 1.5},
        {"org_id": "o:1"},
        {"key_id": ""},
        {"budgets": (BudgetRule("org", "other", 1, "daily"),)},
        {"budgets": (BudgetRule("key", "k2", 1, "daily", org_id="o1"),)},
    ],
)
def test_bad_policies_are_refused(kwargs):
    with pytest.raises(InvalidRequest):
        LimitPolicy(**{"org_id": "o1", "key_id": "k1", **kwargs})


def test_local_limiter_refuses_a_bad_lease():
    with pytest.raises(InvalidRequest, match="lease_s"):
        LocalLimiter(lease_s=0)


def test_utc_calendar_periods():
    day = period_window("daily", ts(2031, 12, 31, 23, 59, 59))
    assert (day.suffix, day.start, day.end) == ("20311231", ts(2031, 12, 31), ts(2032, 1, 1))
    month = period_window("monthly", ts(2032, 2, 29, 12))
    assert (month.suffix, month.start, month.end) == ("203202", ts(2032, 2, 1), ts(2032, 3, 1))
    december = period_window("monthly", ts(2031, 12, 15))
    assert december.end_dt == datetime(2032, 1, 1, tzinfo=UTC)
    total = period_window("total", ts(2031, 1, 1))
    assert (total.suffix, total.start_dt, total.end_dt) == ("all", None, None)
    with pytest.raises(ValueError, match="weekly"):
        period_window("weekly", 0)


def test_calendar_cache_moves_with_time():
    calendar = PeriodCalendar()
    assert calendar.window("daily", ts(2031, 3, 1, 23)).suffix == "20310301"
    assert calendar.window("daily", ts(2031, 3, 2, 0)).suffix == "20310302"
    assert calendar.window("daily", ts(2031, 3, 1, 5)).suffix == "20310301"


def test_key_names_carry_the_org_hash_tag():
    keys = KeySpace("fg")
    assert keys.rate("o1", "key", "k1", "rpm") == "fg:{o1}:rl:key:k1:rpm"
    assert keys.budget("o1", "org", "o1", "daily", "20310101") == (
        "fg:{o1}:budget:org:o1:daily:20310101", "fg:{o1}:budget:org:o1:daily:20310101:leases")
    assert keys.marker("o1", "ab12") == "fg:{o1}:res:ab12"


def test_gcra_burst_then_steady_rate():
    level = 0.0
    for _ in range(60):
        allowed, level, _ = admit(level, 1, 60)
        assert allowed
    allowed, _, wait = admit(level, 1, 60)
    assert not allowed and wait == pytest.approx(1_000.0)
    state = (level, 1_000.0)
    assert remaining(backlog(state, 1_000.0)[0], 60) == 0
    assert remaining(backlog(state, 31_000.0)[0], 60) == 30
    assert admit(backlog(state, 2_000.0)[0], 1, 60)[0]
    allowed, _, wait = admit(0.0, 61, 60)
    assert not allowed and wait == float("inf")


def test_gcra_judges_a_late_timestamp_at_the_latest_time_seen():
    state = (30_000.0, 5_000.0)
    assert backlog(state, 4_000.0) == (30_000.0, 5_000.0)
    assert backlog(state, 6_000.0) == (29_000.0, 6_000.0)
    assert backlog(state, 90_000.0) == (0.0, 90_000.0)
    assert backlog(None, 7.0) == (0.0, 7.0)


@pytest.mark.parametrize(
    ("limit", "amount"), [(7, 1), (13, 1), (999, 1), (100_003, 100_003), (1_000_000, 1_000), (3_000_000, 7)]
)
def test_gcra_float_rounding_admits_exactly_a_full_burst(limit, amount):
    level = 0.0
    for _ in range(limit // amount):
        allowed, level, _ = admit(level, amount, limit)
        assert allowed
    assert not admit(level, amount + limit % amount, limit)[0]


def test_gcra_correction():
    _, level, _ = admit(0.0, 800, 1_000)
    assert correct(level, -700, 1_000) == pytest.approx(100 * WINDOW_MS / 1_000)
    assert correct(level, -900, 1_000) <= 0  # back to a full bucket
    assert correct(0.0, 50, 1_000) == pytest.approx(50 * WINDOW_MS / 1_000)


@pytest.mark.parametrize(
    ("ms", "text"), [(0, "0ms"), (20.2, "21ms"), (999, "999ms"), (1_000, "1s"), (1_500, "1.5s"),
                     (59_500, "59.5s"), (60_000, "1m0s"), (360_000, "6m0s"), (61_250, "1m1.25s")],
)
def test_durations_read_like_openai(ms, text):
    assert duration(ms) == text


def test_headers_pick_the_tightest_limit_and_round_retry_after_up():
    readings = [Reading("rpm", "key", 100, 50, 30_000), Reading("rpm", "org", 1_000, 10, 600),
                Reading("tpm", "key", 5_000, 4_000, 12_000)]
    assert ratelimit_headers(readings) == {
        "x-ratelimit-limit-requests": "1000", "x-ratelimit-remaining-requests": "10",
        "x-ratelimit-reset-requests": "600ms", "x-ratelimit-limit-tokens": "5000",
        "x-ratelimit-remaining-tokens": "4000", "x-ratelimit-reset-tokens": "12s",
    }
    headers = retry_headers(1_000.4, readings)
    assert headers["Retry-After"] == "2" and headers["retry-after-ms"] == "1001"
    assert retry_headers(0.0, [])["Retry-After"] == "1"
