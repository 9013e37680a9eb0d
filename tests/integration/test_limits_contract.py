"""The Limiter contract, run against both implementations: LocalLimiter and RedisLimiter (real Redis)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from gateway.errors import InsufficientQuota, InvalidRequest, RateLimited
from gateway.limits import BudgetRule, LimitPolicy, LocalLimiter, RedisLimiter


class FakeClock:
    """An injectable clock (epoch seconds) that tests move by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, moment: datetime) -> None:
        self.now = moment.timestamp()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2031, 5, 10, 12, 0, tzinfo=UTC))


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
async def make_limiter(request, clock):
    """A factory of limiters of one kind sharing `clock`; closes what it made."""
    made: list = []
    clients: list = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    def make(**kwargs):
        if url is None:
            limiter = LocalLimiter(clock=clock, **kwargs)
        else:
            client = aioredis.Redis.from_url(url)
            clients.append(client)
            limiter = RedisLimiter(client, clock=clock, timeout_s=2.0, **kwargs)
        made.append(limiter)
        return limiter

    make.kind = request.param
    yield make
    for limiter in made:
        await limiter.close()
        assert not limiter.degraded
    for client in clients:
        await client.aclose()


def org_budget(limit: int, period: str = "daily", soft: int = 80) -> BudgetRule:
    return BudgetRule("org", "o1", limit, period, soft)


def policy(*budgets: BudgetRule, **limits) -> LimitPolicy:
    return LimitPolicy("o1", "k1", budgets=budgets, **limits)


async def test_no_limits_means_nothing_to_check(make_limiter):
    limiter = make_limiter()
    res = await limiter.reserve(policy(), cost_micros=10**12, tokens=10**9)
    assert res.origin == "none" and res.headers == {} and not res.needs_settle
    await limiter.settle(res, cost_micros=5, tokens=5)


async def test_budget_reserve_settle_and_status(make_limiter, clock):
    limiter = make_limiter()
    rule = org_budget(5_000)
    res = await limiter.reserve(policy(rule), cost_micros=1_200, tokens=10)
    assert (res.reserved_micros, res.reserved_tokens, res.soft_limit_hit) == (1_200, 10, False)
    status = await limiter.budget_status(rule)
    assert (status.spent_micros, status.reserved_micros, status.remaining_micros) == (0, 1_200, 3_800)
    assert status.period_start == datetime(2031, 5, 10, tzinfo=UTC)
    assert status.resets_at == datetime(2031, 5, 11, tzinfo=UTC)
    await limiter.settle(res, cost_micros=700, tokens=8)
    status = await limiter.budget_status(rule)
    assert (status.limit_micros, status.spent_micros, status.reserved_micros, status.remaining_micros) == (
        5_000, 700, 0, 4_300)


async def test_exhausted_budget_is_insufficient_quota(make_limiter):
    limiter = make_limiter()
    rule = org_budget(1_000)
    first = await limiter.reserve(policy(rule), cost_micros=600, tokens=1)
    with pytest.raises(InsufficientQuota) as info:
        await limiter.reserve(policy(rule), cost_micros=401, tokens=1)
    assert info.value.status == 429 and info.value.code == "insufficient_quota"
    assert "$0.0004 of $0.001 left" in info.value.message
    # exactly what is left fits
    await limiter.reserve(policy(rule), cost_micros=400, tokens=1)
    await limiter.settle(first, cost_micros=600, tokens=1)
    assert (await limiter.budget_status(rule)).remaining_micros == 0


async def test_every_budget_must_cover_the_cost(make_limiter):
    limiter = make_limiter()
    org = org_budget(10_000, "monthly")
    key = BudgetRule("key", "k1", 500, "total", 0, org_id="o1")
    with pytest.raises(InsufficientQuota, match="key k1"):
        await limiter.reserve(policy(org, key), cost_micros=501, tokens=1)
    assert (await limiter.budget_status(org)).reserved_micros == 0  # all or nothing
    res = await limiter.reserve(policy(org, key), cost_micros=500, tokens=1)
    await limiter.settle(res, cost_micros=450, tokens=1)
    assert (await limiter.budget_status(org)).spent_micros == 450
    key_status = await limiter.budget_status(key)
    assert key_status.spent_micros == 450 and key_status.resets_at is None and key_status.period_start is None


async def test_rate_limit_refusal_reserves_no_budget_and_budget_refusal_counts_no_request(make_limiter):
    limiter = make_limiter()
    rule = org_budget(1_000)
    await limiter.reserve(policy(rule, key_rpm=1), cost_micros=100, tokens=1)
    with pytest.raises(RateLimited):
        await limiter.reserve(policy(rule, key_rpm=1), cost_micros=100, tokens=1)
    assert (await limiter.budget_status(rule)).reserved_micros == 100
    with pytest.raises(InsufficientQuota):
        await limiter.reserve(policy(rule, org_rpm=2), cost_micros=5_000, tokens=1)
    ok = await limiter.reserve(policy(rule, org_rpm=2), cost_micros=100, tokens=1)
    assert ok.headers["x-ratelimit-remaining-requests"] == "1"


async def test_rpm_burst_lets_exactly_the_limit_through_with_accurate_retry_after(make_limiter, clock):
    limiter = make_limiter()
    outcomes = await asyncio.gather(
        *(limiter.reserve(policy(key_rpm=60), cost_micros=0, tokens=0) for _ in range(100)), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, RateLimited)]
    assert len(refused) == 40 and sum(not isinstance(o, BaseException) for o in outcomes) == 60
    for error in refused:
        assert error.code == "rate_limit_exceeded" and error.status == 429
        assert error.headers["Retry-After"] == "1"
        assert error.headers["x-ratelimit-remaining-requests"] == "0"
        assert error.headers["x-ratelimit-limit-requests"] == "60"
    clock.advance(0.4)
    with pytest.raises(RateLimited) as info:
        await limiter.reserve(policy(key_rpm=60), cost_micros=0, tokens=0)
    assert info.value.headers["retry-after-ms"] == "600" and info.value.headers["Retry-After"] == "1"
    clock.advance(0.6)
    await limiter.reserve(policy(key_rpm=60), cost_micros=0, tokens=0)


async def test_retry_after_is_whole_seconds_up_to_a_minute(make_limiter, clock):
    limiter = make_limiter()
    await limiter.reserve(policy(key_rpm=1), cost_micros=0, tokens=0)
    clock.advance(0.5)
    with pytest.raises(RateLimited) as info:
        await limiter.reserve(policy(key_rpm=1), cost_micros=0, tokens=0)
    assert info.value.headers["Retry-After"] == "60"  # 59.5 s rounds up
    assert info.value.headers["x-ratelimit-reset-requests"] == "59.5s"
    clock.advance(59.5)
    res = await limiter.reserve(policy(key_rpm=1), cost_micros=0, tokens=0)
    assert res.headers["x-ratelimit-remaining-requests"] == "0"


async def test_headers_report_the_tightest_limit(make_limiter):
    limiter = make_limiter()
    res = await limiter.reserve(policy(key_rpm=100, org_rpm=10, key_tpm=1_000, org_tpm=50_000),
                                cost_micros=0, tokens=400)
    assert res.headers == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "6s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "600",
        "x-ratelimit-reset-tokens": "24s",
    }


async def test_tpm_is_corrected_to_actual_tokens_at_settle(make_limiter):
    limiter = make_limiter()
    limits = policy(key_tpm=1_000)
    first = await limiter.reserve(limits, cost_micros=0, tokens=800)
    with pytest.raises(RateLimited) as info:
        await limiter.reserve(limits, cost_micros=0, tokens=800)
    assert 1 <= int(info.value.headers["Retry-After"]) <= 60
    await limiter.settle(first, cost_micros=0, tokens=100)  # the answer was short
    second = await limiter.reserve(limits, cost_micros=0, tokens=800)
    assert second.headers["x-ratelimit-remaining-tokens"] == "100"
    await limiter.settle(second, cost_micros=0, tokens=900)  # upstream ignored max_tokens: debit the extra
    with pytest.raises(RateLimited):
        await limiter.reserve(limits, cost_micros=0, tokens=1)


async def test_request_larger_than_tpm_never_fits(make_limiter):
    limiter = make_limiter()
    with pytest.raises(RateLimited, match="Request too large") as info:
        await limiter.reserve(policy(org_tpm=1_000), cost_micros=0, tokens=1_001)
    assert info.value.headers["Retry-After"] == "60"


async def test_soft_limit_flag_at_threshold(make_limiter):
    limiter = make_limiter()
    rule = org_budget(1_000, soft=80)
    assert not (await limiter.reserve(policy(rule), cost_micros=799, tokens=1)).soft_limit_hit
    assert not (await limiter.budget_status(rule)).soft_limit_hit
    hit = await limiter.reserve(policy(rule), cost_micros=1, tokens=1)
    assert hit.soft_limit_hit and hit.soft_limit_rules == (rule,)
    assert (await limiter.budget_status(rule)).soft_limit_hit
    silent = BudgetRule("org", "o2", 1_000, "daily", 0)
    res = await limiter.reserve(LimitPolicy("o2", "k2", budgets=(silent,)), cost_micros=1_000, tokens=1)
    assert not res.soft_limit_hit


@pytest.mark.parametrize(
    ("period", "before", "after"),
    [
        ("daily", datetime(2031, 5, 10, 23, 59, 59, tzinfo=UTC), datetime(2031, 5, 11, 0, 0, 1, tzinfo=UTC)),
        ("monthly", datetime(2031, 5, 31, 23, 59, 59, tzinfo=UTC), datetime(2031, 6, 1, 0, 0, 1, tzinfo=UTC)),
    ],
)
async def test_new_period_starts_from_zero(make_limiter, clock, period, before, after):
    limiter = make_limiter()
    rule = org_budget(1_000, period)
    clock.set(before)
    res = await limiter.reserve(policy(rule), cost_micros=1_000, tokens=1)
    await limiter.settle(res, cost_micros=1_000, tokens=1)
    with pytest.raises(InsufficientQuota):
        await limiter.reserve(policy(rule), cost_micros=1, tokens=1)
    clock.set(after)
    status = await limiter.budget_status(rule)
    assert (status.spent_micros, status.remaining_micros, status.period_start) == (0, 1_000, after.replace(second=0))
    await limiter.reserve(policy(rule), cost_micros=1_000, tokens=1)


async def test_total_budget_never_rolls_over(make_limiter, clock):
    limiter = make_limiter()
    rule = org_budget(1_000, "total")
    res = await limiter.reserve(policy(rule), cost_micros=900, tokens=1)
    await limiter.settle(res, cost_micros=900, tokens=1)
    clock.advance(400 * 86_400)
    assert (await limiter.budget_status(rule)).spent_micros == 900


async def test_lease_expiry_frees_a_crashed_reservation(make_limiter, clock):
    crashed = make_limiter(lease_s=30)
    survivor = make_limiter(lease_s=30) if make_limiter.kind == "redis" else crashed
    rule = org_budget(1_000)
    await crashed.reserve(policy(rule), cost_micros=1_000, tokens=1)  # its gateway dies: never settled
    with pytest.raises(InsufficientQuota):
        await survivor.reserve(policy(rule), cost_micros=1, tokens=1)
    clock.advance(31)
    assert (await survivor.budget_status(rule)).reserved_micros == 0
    await survivor.reserve(policy(rule), cost_micros=1_000, tokens=1)


async def test_settle_is_idempotent_and_records_overspend(make_limiter):
    limiter = make_limiter()
    rule = org_budget(10_000)
    res = await limiter.reserve(policy(rule, key_tpm=1_000), cost_micros=1_000, tokens=100)
    await limiter.settle(res, cost_micros=1_500, tokens=150)  # actual above the reservation: real spend counts
    await limiter.settle(res, cost_micros=1_500, tokens=150)
    await limiter.release(res)
    status = await limiter.budget_status(rule)
    assert (status.spent_micros, status.reserved_micros) == (1_500, 0)


async def test_late_settle_after_lease_expiry_still_records_spend(make_limiter, clock):
    limiter = make_limiter(lease_s=30)
    rule = org_budget(10_000)
    res = await limiter.reserve(policy(rule), cost_micros=1_000, tokens=1)
    clock.advance(45)
    assert (await limiter.budget_status(rule)).reserved_micros == 0
    await limiter.settle(res, cost_micros=800, tokens=1)
    status = await limiter.budget_status(rule)
    assert (status.spent_micros, status.reserved_micros) == (800, 0)


async def test_release_frees_budget_and_tokens_but_counts_the_request(make_limiter):
    limiter = make_limiter()
    rule = org_budget(1_000)
    limits = policy(rule, key_rpm=2, key_tpm=100)
    res = await limiter.reserve(limits, cost_micros=1_000, tokens=100)
    await limiter.release(res)
    again = await limiter.reserve(limits, cost_micros=1_000, tokens=100)
    assert again.headers["x-ratelimit-remaining-requests"] == "0"
    assert again.headers["x-ratelimit-remaining-tokens"] == "0"
    status = await limiter.budget_status(rule)
    assert (status.spent_micros, status.reserved_micros) == (0, 1_000)


async def test_rebuild_sets_the_current_period_spend(make_limiter):
    limiter = make_limiter()
    rule = org_budget(5_000, "monthly")
    await limiter.rebuild(rule, 4_000)
    status = await limiter.budget_status(rule)
    assert (status.spent_micros, status.remaining_micros) == (4_000, 1_000)
    with pytest.raises(InsufficientQuota):
        await limiter.reserve(policy(rule), cost_micros=1_500, tokens=1)
    await limiter.rebuild(rule, 0)
    await limiter.reserve(policy(rule), cost_micros=1_500, tokens=1)


async def test_large_amounts_stay_exact(make_limiter):
    limiter = make_limiter()
    rule = org_budget(10**15 + 100, "total")  # a billion dollars, to the micro-dollar
    await limiter.rebuild(rule, 10**15 + 1)
    res = await limiter.reserve(policy(rule), cost_micros=99, tokens=1)
    with pytest.raises(InsufficientQuota):
        await limiter.reserve(policy(rule), cost_micros=1, tokens=1)
    await limiter.settle(res, cost_micros=98, tokens=1)
    status = await limiter.budget_status(rule)
    assert (status.spent_micros, status.remaining_micros) == (10**15 + 99, 1)


async def test_concurrent_reserves_never_overshoot(make_limiter):
    limiter = make_limiter()
    rule = org_budget(5_000)

    async def one() -> int:
        res = await limiter.reserve(policy(rule), cost_micros=70, tokens=1)
        await asyncio.sleep(0)
        await limiter.settle(res, cost_micros=70, tokens=1)
        return 70

    outcomes = await asyncio.gather(*(one() for _ in range(300)), return_exceptions=True)
    accepted = [o for o in outcomes if o == 70]
    assert len(accepted) == 5_000 // 70
    assert all(isinstance(o, InsufficientQuota) for o in outcomes if o != 70)
    assert (await limiter.budget_status(rule)).spent_micros == 70 * (5_000 // 70)


@pytest.mark.parametrize("bad", [-1, 1.5, True, None])
async def test_bad_amounts_are_refused(make_limiter, bad):
    limiter = make_limiter()
    with pytest.raises(InvalidRequest, match="cost_micros"):
        await limiter.reserve(policy(org_budget(1_000)), cost_micros=bad, tokens=1)
    with pytest.raises(InvalidRequest, match="tokens"):
        await limiter.reserve(policy(org_budget(1_000)), cost_micros=1, tokens=bad)
    res = await limiter.reserve(policy(org_budget(1_000)), cost_micros=1, tokens=1)
    with pytest.raises(InvalidRequest):
        await limiter.settle(res, cost_micros=bad, tokens=1)
    with pytest.raises(InvalidRequest):
        await limiter.rebuild(org_budget(1_000), bad)
