"""SIGKILL the gateway under load: every response the client got is in the lake, exactly once.
Then Redis loses its data and the budget is rebuilt from the lake."""

from __future__ import annotations

import asyncio
import signal
import uuid

import aiohttp
import redis

from analytics_lake.query import LakeQuery
from gateway.settings import Settings
from gateway.usage import lake_config
from tests.fleet import sim_pod
from tests.support import wait_for


async def _load(gw, key: str, received: dict[str, int], stop: asyncio.Event) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "durable"}], "max_tokens": 3}
    async with aiohttp.ClientSession() as s:
        async def worker() -> None:
            while not stop.is_set():
                rid = uuid.uuid4().hex
                try:
                    async with s.post(gw.url + "/v1/chat/completions", json=body,
                                      headers={"Authorization": f"Bearer {key}", "X-Request-ID": rid}) as r:
                        await r.read()
                        received[rid] = r.status
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    await asyncio.sleep(0.01)  # the gateway is dead or restarting

        await asyncio.gather(*(worker() for _ in range(16)))


def _lake_rows(state_dir) -> list[dict]:
    settings = Settings(state_dir=state_dir)
    with LakeQuery(lake_config(settings)) as lake:
        return lake.sql("select request_id, status, cost_micros, org_id from usage").to_pylist()


async def test_sigkill_loses_nothing_and_budget_rebuilds_from_the_lake(gateway_factory, redis_url, tmp_path):
    async with sim_pod("m") as pod:
        gw = await asyncio.to_thread(gateway_factory, FLEETGATE_USAGE_SINK="spool",
                                     FLEETGATE_REDIS_URL=redis_url, FLEETGATE_LAKE_FLUSH_S="0.5")
        with gw.admin() as admin:
            org = admin.post("/admin/v1/organizations", json={"name": "acme"}).json()
            admin.post("/admin/v1/models", json={"name": "m", "endpoint": pod, "input_price": 1, "output_price": 2})
            admin.put("/admin/v1/budgets", json={"org": "acme", "usd": 100, "period": "monthly"})
            key = admin.post("/admin/v1/api-keys", json={"org": "acme"}).json()["key"]

        received: dict[str, int] = {}
        stop = asyncio.Event()
        load = asyncio.create_task(_load(gw, key, received, stop))
        await asyncio.to_thread(wait_for, lambda: len(received) >= 300, timeout=30, what="300 responses")
        gw.stop(signal.SIGKILL)
        stop.set()
        await load
        served = {rid for rid, status in received.items() if status == 200}
        assert len(served) >= 300

        await asyncio.to_thread(gw.start)  # same port and state: replays the spool left by the kill
        gw.stop(signal.SIGTERM)  # a clean stop flushes everything to Parquet
        rows = _lake_rows(tmp_path / "state")
        ids = [r["request_id"] for r in rows]
        assert len(ids) == len(set(ids)), "duplicate rows"
        assert served <= set(ids), f"{len(served - set(ids))} served requests missing from the lake"
        assert all(r["org_id"] == org["id"] for r in rows)

        # Redis loses its data: the budget's spend is rebuilt from the lake.
        await asyncio.to_thread(gw.start)
        spent_in_lake = sum(r["cost_micros"] for r in rows)
        client = redis.Redis.from_url(redis_url)
        client.flushall()
        client.close()
        with gw.admin() as admin:
            assert admin.get("/admin/v1/budgets/acme").json()[0]["spent_micros"] == 0
            rebuilt = admin.post("/admin/v1/budgets/rebuild", json={"org": "acme"}).json()
            assert rebuilt[0]["spent_micros"] == spent_in_lake
            assert admin.get("/admin/v1/budgets/acme").json()[0]["spent_micros"] == spent_in_lake
            r = admin.post("/admin/v1/budgets/rebuild", json={"org": "nope"})
            assert r.status_code == 404
