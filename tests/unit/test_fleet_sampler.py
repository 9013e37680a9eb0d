"""opsctl/fleet.py on known numbers: windows of cumulative fleet counters → rates, quantiles, history, spend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from opsctl.fleet import FleetSampler, sparkline, spend_since

T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
BOUNDS = [10.0, 100.0, 1000.0, None]  # ms; the last bucket is +inf


def model(name: str = "m", env: str = "production", *, requests: int = 0, errors: int = 0,
          latency: list[int] | None = None, ttft: list[int] | None = None, ready: int = 1, total: int = 1,
          waiting: float | None = 0.0, kv: float | None = 0.25) -> dict:
    return {"model": name, "environment": env, "status": "active", "requests": requests, "errors": errors,
            "client_errors": 0, "latency_buckets": latency or [0, 0, 0, 0], "ttft_buckets": ttft or [0, 0, 0, 0],
            "endpoints": {"ready": ready, "total": total, "in_flight": 0, "waiting": waiting, "kv_usage_max": kv}}


def answer(seconds: float, *models: dict, boot: str = "boot-1") -> dict:
    return {"now": (T0 + timedelta(seconds=seconds)).isoformat(), "boot_id": boot,
            "latency_bounds_ms": BOUNDS, "ttft_bounds_ms": BOUNDS, "models": list(models)}


def test_first_answer_has_no_rates_and_the_second_gives_the_window():
    sampler = FleetSampler()
    first = sampler.feed(answer(0, model(requests=100, latency=[100, 0, 0, 0])))
    row = first.rows[0]
    assert first.window_s is None and row.req_s is None and row.p95_ms is None and row.error_rate is None
    assert (row.ready, row.total, row.queue, row.kv_max, row.spend_usd) == (1, 1, 0.0, 0.25, None)

    # 2 s later: 10 more requests, 1 of them an error, all under 10 ms; 4 streamed, first events 10..100 ms
    view = sampler.feed(answer(2, model(requests=110, errors=1, latency=[110, 0, 0, 0], ttft=[0, 4, 0, 0])))
    row = view.rows[0]
    assert view.window_s == 2.0
    assert row.req_s == 5.0 and row.error_rate == 0.1 and row.alert == "errors"
    assert row.p50_ms == pytest.approx(5.0) and row.p95_ms == pytest.approx(9.5)  # linear inside the first bucket
    assert row.ttft_p50_ms == pytest.approx(10 * 10 ** 0.5)  # log-spread inside (10, 100]
    assert view.totals.req_s == 5.0 and view.totals.error_rate == pytest.approx(0.1) and view.totals.alerts == 1


def test_rates_cover_about_the_window_not_just_the_last_refresh():
    sampler = FleetSampler(window_s=10.0)
    for i in range(11):  # every 2 s, 8 requests: 4 req/s; the last 2 s had a burst of 40
        requests = 8 * i + (32 if i == 10 else 0)
        view = sampler.feed(answer(2 * i, model(requests=requests, latency=[requests, 0, 0, 0])))
    assert view.window_s == 10.0
    assert view.rows[0].req_s == pytest.approx((8 * 5 + 32) / 10)
    assert view.rows[0].error_rate == 0.0 and view.rows[0].alert == ""


def test_a_restart_or_a_counter_going_back_starts_the_window_again():
    sampler = FleetSampler()
    sampler.feed(answer(0, model(requests=50)))
    assert sampler.feed(answer(2, model(requests=60))).rows[0].req_s == 5.0
    restarted = sampler.feed(answer(4, model(requests=3), boot="boot-2"))
    assert restarted.window_s is None and restarted.rows[0].req_s is None
    assert sampler.feed(answer(6, model(requests=7), boot="boot-2")).rows[0].req_s == 2.0
    went_back = sampler.feed(answer(8, model(requests=1), boot="boot-2"))  # a worker's files were lost
    assert went_back.rows[0].req_s is None
    history = went_back.rows[0].history
    assert [v for _, v in history] == [5.0, 2.0]  # history survives restarts


def test_a_repeated_or_older_answer_changes_nothing():
    sampler = FleetSampler()
    sampler.feed(answer(0, model(requests=0)))
    view = sampler.feed(answer(2, model(requests=4)))
    assert sampler.feed(answer(2, model(requests=999))) is view
    assert sampler.feed(answer(1, model(requests=999))) is view


def test_a_new_model_gets_rates_from_its_second_answer_and_gone_models_leave():
    sampler = FleetSampler(history_s=60.0)
    sampler.feed(answer(0, model("a")))
    view = sampler.feed(answer(2, model("a", requests=2), model("b", requests=10)))
    rates = {r.model: r.req_s for r in view.rows}
    assert rates == {"a": 1.0, "b": None}
    view = sampler.feed(answer(4, model("a", requests=2), model("b", requests=14)))
    assert {r.model: r.req_s for r in view.rows} == {"a": 0.5, "b": 2.0}  # a: since t=0, b: since it appeared
    assert view.totals.req_s == 2.5 and view.totals.error_rate == 0.0
    sampler.feed(answer(100, model("a", requests=2)))
    assert set(sampler._history) == {("a", "production")}  # b left no memory behind


def test_no_ready_endpoint_is_flagged_down_and_totals_add_up():
    sampler = FleetSampler()
    view = sampler.feed(answer(0, model("a", ready=0, total=2, waiting=None, kv=None), model("b", ready=3, total=3)))
    a, b = view.rows
    assert (a.alert, b.alert) == ("down", "")
    assert (a.queue, a.kv_max) == (None, None)
    assert (view.totals.rows, view.totals.ready, view.totals.total, view.totals.alerts) == (2, 3, 5, 1)
    assert view.totals.req_s is None and view.totals.spend_usd is None
    assert a.key == "a@production"


def test_history_keeps_the_last_span_and_draws_a_sparkline():
    sampler = FleetSampler(window_s=2.0, history_s=10.0)
    for i, requests in enumerate([0, 2, 4, 6, 8, 10, 20, 30]):
        view = sampler.feed(answer(2 * i, model(requests=requests)))
    history = view.rows[0].history
    assert [t - T0.timestamp() for t, _ in history] == [6.0, 8.0, 10.0, 12.0, 14.0]
    assert [v for _, v in history] == [1.0, 1.0, 1.0, 5.0, 5.0]
    assert sparkline(history, now=view.at, span_s=10.0, width=5) == "▂▂▂██"
    assert sparkline(history, now=view.at, span_s=20.0, width=4) == "  ▃█"  # no samples in the first half
    assert sparkline([(1.0, 0.0), (2.0, 0.0)], now=2.0, span_s=2.0, width=2) == "▁▁"
    assert sparkline([], now=2.0, width=3) == "   " and sparkline(history, now=1.0, width=0) == ""


def test_spend_is_merged_per_row_and_read_at_most_every_interval():
    sampler = FleetSampler(spend_every_s=30.0)
    assert sampler.spend_due(100.0)
    sampler.set_spend([{"model": "a", "environment": "production", "cost_usd": 1.25},
                       {"model": "a", "environment": "production", "cost_usd": 0.5},
                       {"model": "zz", "environment": "staging", "cost_usd": 9.0}], 100.0)
    assert not sampler.spend_due(129.9) and sampler.spend_due(130.0)
    view = sampler.feed(answer(0, model("a"), model("b")))
    assert [r.spend_usd for r in view.rows] == [1.75, 0.0]
    assert view.totals.spend_usd == 1.75
    sampler.spend_failed(130.0)
    assert not sampler.spend_due(150.0)
    assert sampler.feed(answer(2, model("a"), model("b"))).rows[0].spend_usd == 1.75  # the last good figures


def test_not_a_fleet_answer_is_refused():
    sampler = FleetSampler()
    with pytest.raises(ValueError, match="models"):
        sampler.feed({"now": T0.isoformat()})
    with pytest.raises(ValueError, match="ISO"):
        sampler.feed({"now": "yesterday", "models": []})


def test_today_is_the_utc_date():
    assert spend_since(datetime(2026, 11, 30, 23, 30, tzinfo=timezone(timedelta(hours=-5)))) == "2026-12-01"
    assert spend_since(T0) == "2026-11-30"
