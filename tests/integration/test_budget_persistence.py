"""Budget spend survives restarts (with and without Redis, a killed gateway's spool included) and
Redis losing its data: counters come back from the usage lake, by themselves."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import Counter

import httpx
import redis.asyncio as aioredis

from analytics_lake.location import LakeConfig
from analytics_lake.query import LakeQuery
from analytics_lake.synthetic import make_event
from analytics_lake.writer import events_to_table, write_table
from gateway import appkeys
from gateway.usage import lake_config
from tests.e2e.conftest import GatewayProcess
from tests.fleet import ADMIN_TOKEN, gateway_settings, running_gateway, sim_pod
from tests.integration.test_dataplane import fire
from tests.support import eventually

PRICE_OUT = 2.0  # USD per 1M output tokens: 2 micro-USD a token; input is free
MAX_TOKENS = 100
COST = MAX_TOKENS * 2  # ignore_eos: every request costs exactly its reservation
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": MAX_TOKENS, "ignore_eos": True}


async def setup_budget(admin: httpx.AsyncClient, pod: str, *, usd: float, period: str = "monthly") -> str:
    """Org "acme", model "m" on `pod`, a budget and an API key; returns the key."""
    assert (await admin.post("/admin/v1/organizations", json={"name": "acme"})).status_code == 201
    r = await admin.post("/admin/v1/models", json={"name": "m", "endpoint": pod, "input_price": 0,
                                                   "output_price": PRICE_OUT, "max_tokens": MAX_TOKENS})
    assert r.status_code in (200, 201), r.text
    r = await admin.put("/admin/v1/budgets", json={"org": "acme", "usd": usd, "period": period})
    assert r.status_code == 200, r.text
    r = await admin.post("/admin/v1/api-keys", json={"org": "acme"})
    assert r.status_code == 201, r.text
    return r.json()["key"]


async def spent(admin: httpx.AsyncClient) -> int:
    r = await admin.get("/admin/v1/budgets/acme")
    assert r.status_code == 200, r.text
    return r.json()[0]["spent_micros"]


async def spent_reaches(admin: httpx.AsyncClient, micros: int) -> None:
    """Wait for the settles of answered requests (they run just after the response)."""
    async def reached() -> bool:
        return await spent(admin) == micros

    await eventually(reached, timeout=10, what=f"spent_micros to reach {micros}")


async def lake_spend(gw) -> int:
    """The lake's sum of cost_micros, after writing this gateway's usage events to it."""
    await gw.app[appkeys.DATAPLANE].sink.flush()
    with LakeQuery(lake_config(gw.app[appkeys.SETTINGS])) as lake:
        return int(lake.sql("select coalesce(sum(cost_micros), 0) as c from usage").column("c")[0].as_py())


async def test_spend_survives_a_restart_without_redis(tmp_path):
    settings = gateway_settings(tmp_path, usage_sink="spool")
    async with sim_pod("m") as pod:
        async with running_gateway(settings) as gw:
            key = await setup_budget(gw.admin, pod, usd=(10 * COST + COST // 2) / 1e6)  # 10.5 requests
            assert await fire(gw.url, key, 10, body=BODY) == Counter({200: 10})
            await spent_reaches(gw.admin, 10 * COST)

        async with running_gateway(settings) as gw:  # a new process: nothing in memory
            assert await spent(gw.admin) == 10 * COST == await lake_spend(gw)
            r = await gw.admin.get("/admin/v1/budgets/acme")
            assert r.json()[0]["remaining_micros"] == COST // 2
            # Half a request left: the next one is refused, as it would have been before the restart.
            assert await fire(gw.url, key, 1, body=BODY) == Counter({429: 1})


async def test_spool_of_a_killed_gateway_counts_after_restart(tmp_path):
    """SIGKILL leaves usage events in the spool, not yet in Parquet: the restart replays them
    into the lake before the budget reads its spend from it."""
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    env.update(FLEETGATE_ADMIN_TOKEN=ADMIN_TOKEN, FLEETGATE_STATE_DIR=str(state), FLEETGATE_USAGE_SINK="spool",
               FLEETGATE_LAKE_FLUSH_S="3600", FLEETGATE_HEALTH_INTERVAL_S="0.5")
    async with sim_pod("m") as pod:
        proc = GatewayProcess(env, tmp_path / "gateway.log")
        await asyncio.to_thread(proc.start)
        try:
            async with httpx.AsyncClient(base_url=proc.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                                         timeout=30) as admin:
                key = await setup_budget(admin, pod, usd=1.0, period="total")
                assert await fire(proc.url, key, 12, body=BODY) == Counter({200: 12})
        finally:
            proc.stop(signal.SIGKILL)
        left = [line for seg in (state / "spool").rglob("seg-*.ndjson") for line in seg.read_text().splitlines()]
        assert left, "the killed gateway was meant to leave usage events in its spool"

        settings = gateway_settings(tmp_path, usage_sink="spool", port=proc.port)
        async with running_gateway(settings, worker_id=f"gw{proc.port}-0") as gw:  # the killed process's spool
            assert await spent(gw.admin) == 12 * COST == await lake_spend(gw)


async def test_a_budget_set_later_counts_its_periods_earlier_spend(tmp_path):
    """Counters get the lake's part when first met, not only at start-up: the same figure a restart
    would give."""
    async with sim_pod("m") as pod, running_gateway(gateway_settings(tmp_path, usage_sink="spool")) as gw:
        key = await setup_budget(gw.admin, pod, usd=1.0)
        assert await fire(gw.url, key, 4, body=BODY) == Counter({200: 4})
        r = await gw.admin.put("/admin/v1/budgets", json={"org": "acme", "usd": 1.0, "period": "daily"})
        assert r.status_code == 200
        assert await fire(gw.url, key, 1, body=BODY) == Counter({200: 1})

        async def daily() -> bool:
            r = await gw.admin.get("/admin/v1/budgets/acme")
            return {b["period"]: b["spent_micros"] for b in r.json()}.get("daily") == 5 * COST

        await eventually(daily, timeout=10, what="the new daily budget to count the earlier spend")


async def test_redis_restarted_empty_while_the_gateway_was_down(tmp_path, redis_url):
    settings = gateway_settings(tmp_path, usage_sink="spool", redis_url=redis_url)
    async with sim_pod("m") as pod:
        async with running_gateway(settings) as gw:
            key = await setup_budget(gw.admin, pod, usd=1.0)
            assert await fire(gw.url, key, 6, body=BODY) == Counter({200: 6})
        client = aioredis.Redis.from_url(redis_url)
        await client.flushall()
        await client.aclose()
        async with running_gateway(settings) as gw:  # start-up checks every budget's counters
            assert await spent(gw.admin) == 6 * COST == await lake_spend(gw)


async def test_redis_losing_its_data_is_noticed_and_counters_rebuilt(tmp_path, redis_url):
    settings = gateway_settings(tmp_path, usage_sink="spool", redis_url=redis_url)
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with sim_pod("m") as pod, running_gateway(settings) as gw:
            key = await setup_budget(gw.admin, pod, usd=1.0)
            assert await fire(gw.url, key, 5, body=BODY) == Counter({200: 5})
            await client.flushall()  # or a restart without persistence: no outage to notice
            assert await fire(gw.url, key, 3, body=BODY) == Counter({200: 3})
            await spent_reaches(gw.admin, 8 * COST)  # the lake's 5, then the 3 counted live
            assert await lake_spend(gw) == 8 * COST
            assert await fire(gw.url, key, 2, body=BODY) == Counter({200: 2})
            await spent_reaches(gw.admin, 10 * COST)
            assert await spent(gw.admin) == 10 * COST == await lake_spend(gw)  # nothing counted twice
    finally:
        await client.aclose()


async def test_rebuild_recounts_from_the_lake(tmp_path, redis_url):
    """`opsctl budget rebuild`: counters known to be wrong are replaced by the lake's figure."""
    settings = gateway_settings(tmp_path, usage_sink="spool", redis_url=redis_url)
    async with sim_pod("m") as pod, running_gateway(settings) as gw:
        key = await setup_budget(gw.admin, pod, usd=1.0)
        assert await fire(gw.url, key, 4, body=BODY) == Counter({200: 4})
        await spent_reaches(gw.admin, 4 * COST)
        client = aioredis.Redis.from_url(redis_url)
        [budget_key] = [k async for k in client.scan_iter(match="fg:*:budget:org:*") if not k.endswith(b"leases")]
        await client.hincrby(budget_key, "spent", 12_345)  # e.g. an outage under the fail-open policy
        await client.aclose()
        assert await spent(gw.admin) == 4 * COST + 12_345
        r = await gw.admin.post("/admin/v1/budgets/rebuild", json={"org": "acme"})
        assert r.status_code == 200, r.text
        assert r.json()[0]["spent_micros"] == r.json()[0]["lake_micros"] == 4 * COST
        assert await fire(gw.url, key, 1, body=BODY) == Counter({200: 1})
        await spent_reaches(gw.admin, 5 * COST)
        assert await lake_spend(gw) == 5 * COST


def test_spend_windows_sum_each_budget_in_one_query(tmp_path):
    """The lake's part of several budgets at once: org or key, since a period start, ended before a cut,
    each request once (a row written twice, as after a crash between Parquet and spool, counts once)."""
    rng = random.Random(7)
    t0 = 1_790_000_000_000_000  # epoch µs
    events = [make_event(t0 + i * 60_000_000, org=f"o{i % 2}", key=f"k{i % 3}", rng=rng) for i in range(300)]
    config = LakeConfig(url=f"file://{tmp_path / 'lake'}")
    write_table(config, events_to_table(events), writer_id="a")
    write_table(config, events_to_table(events[:40]), writer_id="b")  # duplicates

    def expected(org: str, key: str | None, start: int | None, cut: int) -> int:
        return sum(e["cost_micros"] for e in events if e["org_id"] == org and key in (None, e["key_id"])
                   and (start is None or e["ts"] >= start) and e["ts"] + round(e["latency_ms"] * 1000) < cut)

    ts = [e["ts"] for e in events]
    windows = [(rng.choice(["o0", "o1", "o9"]), rng.choice([None, "k0", "k2"]),
                rng.choice([None, rng.choice(ts)]), rng.choice(ts) + rng.randint(0, 4_000_000)) for _ in range(40)]
    with LakeQuery(config) as lake:
        got = lake.spend_windows(windows, timeout_s=30)
    assert got == [expected(*w) for w in windows]
    assert sum(1 for v in got if v) > 10


def test_several_workers_without_redis_are_refused(tmp_path):
    """Without Redis each process would hold its own budget: two workers could spend it twice."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    env["FLEETGATE_STATE_DIR"] = str(tmp_path / "state")
    done = subprocess.run([sys.executable, "-m", "opsctl", "gateway", "serve", "--workers", "2", "--port", "0"],
                          env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "workers=2 needs redis_url" in lines[0], done.stderr
