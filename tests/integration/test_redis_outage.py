"""Redis stopped mid-test: requests keep flowing, readiness says degraded, then recovers."""

from __future__ import annotations

import asyncio
from collections import Counter

from tests.fleet import gateway_settings, running_gateway, sim_pod
from tests.integration.test_dataplane import fire
from tests.support import eventually


async def _ready(gw) -> dict:
    return (await gw.admin.get("/v1/status/readyz")).json()


async def test_requests_survive_a_redis_outage(tmp_path, redis_server, redis_url):
    async with sim_pod("m") as pod:
        settings = gateway_settings(tmp_path, redis_url=redis_url, redis_timeout_ms=200)
        async with running_gateway(settings) as gw:
            await gw.create_org()
            await gw.register("m", pod)
            key = (await gw.create_key(rpm_limit=100_000))["key"]
            assert await fire(gw.url, key, 50) == Counter({200: 50})
            assert (await _ready(gw))["status"] == "ready"

            redis_server.stop()
            started = asyncio.get_running_loop().time()
            assert await fire(gw.url, key, 100) == Counter({200: 100})
            elapsed = asyncio.get_running_loop().time() - started
            assert elapsed < 10, f"requests stalled on the dead Redis ({elapsed:.1f}s)"
            ready = await _ready(gw)
            assert ready["status"] == "degraded" and "redis" in ready["degraded"]
            metrics = (await gw.admin.get("/metrics")).text
            assert "fleetgate_redis_degraded 1.0" in metrics

            redis_server.start()
            async def recovered() -> bool:
                await fire(gw.url, key, 2)
                return (await _ready(gw))["status"] == "ready"

            await eventually(recovered, timeout=10, interval=0.1, what="readiness to recover with Redis")
            assert await fire(gw.url, key, 20) == Counter({200: 20})
