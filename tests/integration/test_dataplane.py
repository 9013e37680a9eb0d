"""The data plane with real pods (simulator) behind it: weights, affinity, failover, fallback, metrics."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from opsctl.sim import SimConfig, create_sim_app
from tests.fleet import gateway_settings, running_gateway, serve_app, sim_pod
from tests.support import eventually, free_port

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def fire(url: str, key: str, n: int, *, concurrency: int = 32, body: dict | None = None,
               headers: dict | None = None) -> Counter:
    """Send n chat requests; return a Counter of statuses."""
    statuses: Counter = Counter()
    sem = asyncio.Semaphore(concurrency)
    hdrs = {"Authorization": f"Bearer {key}", **(headers or {})}
    async with aiohttp.ClientSession() as session:
        async def one() -> None:
            async with sem, session.post(url + "/v1/chat/completions", json=body or BODY, headers=hdrs) as r:
                await r.read()
                statuses[r.status] += 1

        await asyncio.gather(*(one() for _ in range(n)))
    return statuses


async def served_by_endpoint(gw_url: str) -> Counter:
    async with aiohttp.ClientSession() as session, session.get(gw_url + "/metrics") as r:
        text = await r.text()
    counts: Counter = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "fleetgate_requests":
            for s in family.samples:
                if s.name == "fleetgate_requests_total" and s.labels["status"] == "200":
                    counts[s.labels["endpoint"]] += int(s.value)
    return counts


async def test_weighted_split_and_metrics(tmp_path):
    async with sim_pod("m") as stable, sim_pod("m") as canary:
        async with running_gateway(gateway_settings(tmp_path)) as gw:
            await gw.create_org()
            await gw.register("m", stable, weight=90, release="stable")
            await gw.register("m", canary, weight=10, release="canary")
            key = (await gw.create_key())["key"]
            statuses = await fire(gw.url, key, 2000, concurrency=48)
            assert statuses == Counter({200: 2000})
            counts = await served_by_endpoint(gw.url)
            assert sum(counts.values()) == 2000
            assert 0.07 <= counts[canary] / 2000 <= 0.13, counts


async def test_session_affinity_keeps_a_session_on_one_endpoint(tmp_path):
    async with sim_pod("m") as a, sim_pod("m") as b, sim_pod("m") as c:
        async with running_gateway(gateway_settings(tmp_path)) as gw:
            await gw.create_org()
            for url in (a, b, c):
                await gw.register("m", url)
            key = (await gw.create_key())["key"]
            before = await served_by_endpoint(gw.url)
            await fire(gw.url, key, 60, headers={"X-Session-ID": "session-42"})
            after = await served_by_endpoint(gw.url)
            moved = {ep: after[ep] - before[ep] for ep in after if after[ep] != before[ep]}
            assert list(moved.values()) == [60], moved
            # The body's `user` field is an affinity key too.
            before = after
            await fire(gw.url, key, 30, body={**BODY, "user": "alice"})
            after = await served_by_endpoint(gw.url)
            assert sorted(after[ep] - before[ep] for ep in after if after[ep] != before[ep]) == [30]


async def test_failover_ejection_and_readmission(tmp_path):
    port = free_port()
    runner_cm = serve_app(create_sim_app(SimConfig(model="m", port=port)), port)
    flaky = await runner_cm.__aenter__()
    try:
        async with sim_pod("m") as steady:
            settings = gateway_settings(tmp_path, eject_after_failures=2, eject_cooldown_s=0.5,
                                        health_interval_s=0.3)
            async with running_gateway(settings) as gw:
                await gw.create_org()
                await gw.register("m", flaky)
                await gw.register("m", steady)
                key = (await gw.create_key())["key"]
                assert (await fire(gw.url, key, 100)) == Counter({200: 100})
                await runner_cm.__aexit__(None, None, None)  # kill one pod
                runner_cm = None
                assert (await fire(gw.url, key, 200)) == Counter({200: 200}), "failover must hide the dead pod"
                text = (await gw.admin.get("/metrics")).text
                assert "fleetgate_upstream_retries_total" in text
                # Pod comes back on the same port: probes and a trial request re-admit it.
                runner_cm = serve_app(create_sim_app(SimConfig(model="m", port=port)), port)
                await runner_cm.__aenter__()
                before = (await served_by_endpoint(gw.url))[flaky]

                async def readmitted() -> bool:
                    await fire(gw.url, key, 20)
                    return (await served_by_endpoint(gw.url))[flaky] > before

                await eventually(readmitted, timeout=10, interval=0.1, what="the pod to be re-admitted")
    finally:
        if runner_cm is not None:
            await runner_cm.__aexit__(None, None, None)


async def test_fallback_chain_when_a_model_has_no_healthy_endpoint(tmp_path):
    async with sim_pod("small") as small:
        async with running_gateway(gateway_settings(tmp_path)) as gw:
            await gw.create_org()
            await gw.register("small", small)
            await gw.register("big", f"http://127.0.0.1:{free_port()}", fallbacks=["small"])
            key = (await gw.create_key())["key"]
            async with aiohttp.ClientSession() as s:
                r = await s.post(gw.url + "/v1/chat/completions", json={**BODY, "model": "big"},
                                 headers={"Authorization": f"Bearer {key}"})
                body = await r.json()
                assert r.status == 200 and body["model"] == "small"


async def test_no_endpoint_is_a_503_and_upstream_errors_are_openai_shaped(tmp_path):
    async with sim_pod("m", error_rate=1.0) as broken:
        async with running_gateway(gateway_settings(tmp_path)) as gw:
            await gw.create_org()
            await gw.register("m", broken)
            await gw.register("empty", None)
            key = (await gw.create_key())["key"]
            async with aiohttp.ClientSession() as s:
                hdr = {"Authorization": f"Bearer {key}"}
                r = await s.post(gw.url + "/v1/chat/completions", json=BODY, headers=hdr)
                assert r.status == 502 and (await r.json())["error"]["type"] == "server_error"
                r = await s.post(gw.url + "/v1/chat/completions", json={**BODY, "model": "empty"}, headers=hdr)
                assert r.status == 503 and (await r.json())["error"]["code"] == "no_healthy_endpoint"


async def test_client_disconnect_cancels_the_upstream_request(tmp_path):
    async with sim_pod("m", ttft_ms=50, tokens_per_s=20) as pod:
        async with running_gateway(gateway_settings(tmp_path)) as gw:
            await gw.create_org()
            await gw.register("m", pod)
            key = (await gw.create_key())["key"]
            async with aiohttp.ClientSession() as s:
                r = await s.post(gw.url + "/v1/chat/completions",
                                 json={**BODY, "max_tokens": 200, "stream": True},
                                 headers={"Authorization": f"Bearer {key}"})
                await r.content.readline()
                r.close()  # client goes away mid-stream

                async def running() -> float:
                    async with s.get(pod + "/metrics") as m:
                        for fam in text_string_to_metric_families(await m.text()):
                            if fam.name == "vllm:num_requests_running":
                                return sum(x.value for x in fam.samples)
                    return -1

                async def stopped() -> bool:
                    return await running() == 0

                await eventually(stopped, what="the upstream request to stop after the client left")
