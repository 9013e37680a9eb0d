"""Shadow traffic through a real gateway to simulator pods: exact share, invisible to clients, never billed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from analytics_lake.query import LakeQuery
from gateway import appkeys
from gateway.usage import lake_config
from opsctl.sim import SimConfig, create_sim_app
from opsctl.sim.engine import SimEngine
from opsctl.sim.server import SIM_ENGINE
from tests.fleet import gateway_settings, running_gateway, serve_app, sim_pod
from tests.support import eventually, free_port

IN_PRICE, OUT_PRICE = 3.0, 7.0  # USD per 1M tokens = micro-USD per token
BODY = {"model": "m", "messages": [{"role": "user", "content": "hello shadow"}], "max_tokens": 4}


@contextlib.asynccontextmanager
async def counted_pod(model: str, **kwargs) -> AsyncIterator[tuple[str, SimEngine]]:
    """A simulator pod and its engine, whose `faults.requests` counts the inference requests it got."""
    port = free_port()
    app = create_sim_app(SimConfig(model=model, port=port, **kwargs))
    async with serve_app(app, port) as url:
        yield url, app[SIM_ENGINE]


def shadow_pod(**kwargs) -> contextlib.AbstractAsyncContextManager[tuple[str, SimEngine]]:
    """A pod that accepts model "m" but names its answers "m-shadow" (vLLM answers under the first
    served name): a shadow reply that reached a client would show."""
    return counted_pod("m", served_model_name=("m-shadow", "m"), **kwargs)


async def metric_samples(gw_url: str, name: str) -> list:
    async with aiohttp.ClientSession() as s, s.get(gw_url + "/metrics") as r:
        text = await r.text()
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


async def metric_sum(gw_url: str, name: str, **labels: str) -> float:
    return sum(s.value for s in await metric_samples(gw_url, name)
               if all(s.labels.get(k) == v for k, v in labels.items()))


async def setup_fleet(gw, stable: str, shadow: str, mirror: float, **model) -> tuple[str, dict]:
    """Org, stable endpoint, a disabled shadow endpoint mirroring `mirror` %, a key; returns (key, shadow endpoint)."""
    await gw.create_org()
    await gw.register("m", stable, release="m-production", **model)
    shadow_ep = (await gw.register("m", shadow, release="m-production-canary", weight=0, status="disabled",
                                   mirror_percent=mirror))["endpoint"]
    assert shadow_ep["mirror_percent"] == mirror
    return (await gw.create_key())["key"], shadow_ep


async def chat(session: aiohttp.ClientSession, gw_url: str, key: str, body: dict) -> tuple[int, dict]:
    """One request; (status, {"models": set of `model` fields seen, "usage": last usage}); reads streams."""
    async with session.post(gw_url + "/v1/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {key}"}) as r:
        raw = await r.read()
    seen: dict = {"models": set(), "usage": None}
    if r.status != 200:
        return r.status, seen
    docs = ([orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]
            if body.get("stream") else [orjson.loads(raw)])
    for doc in docs:
        seen["models"].add(doc.get("model"))
        if doc.get("usage"):
            seen["usage"] = doc["usage"]
    return r.status, seen


async def fire(gw_url: str, key: str, bodies: list[dict], concurrency: int = 32) -> list[tuple[int, dict]]:
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:
        async def one(body: dict) -> tuple[int, dict]:
            async with sem:
                return await chat(session, gw_url, key, body)

        return await asyncio.gather(*(one(b) for b in bodies))


async def shadows_settled(gw) -> None:
    shadows = gw.app[appkeys.DATAPLANE].shadows

    async def idle() -> bool:
        return shadows.in_flight == 0

    await eventually(idle, timeout=10, what="shadow requests to finish")


@pytest.mark.parametrize("percent", [20, 50])
async def test_mirrored_share_is_exact_and_clients_only_see_stable(tmp_path, percent):
    async with sim_pod("m") as stable, shadow_pod() as (shadow, engine):
        async with running_gateway(gateway_settings(tmp_path)) as gw:
            key, _ = await setup_fleet(gw, stable, shadow, percent)
            results = await fire(gw.url, key, [BODY] * 1000)
            assert Counter(status for status, _ in results) == {200: 1000}
            assert set().union(*(seen["models"] for _, seen in results)) == {"m"}
            await shadows_settled(gw)
            expected = 1000 * percent // 100
            # The bar is ±3 %; the accumulator makes it exact (±1 request).
            assert abs(engine.faults.requests - expected) <= 1, engine.faults.requests
            assert abs(engine.faults.requests - expected) <= 0.03 * 1000
            mirrored = await metric_sum(gw.url, "fleetgate_shadow_requests_total", release="m-production-canary")
            assert mirrored == engine.faults.requests
            assert await metric_sum(gw.url, "fleetgate_shadow_requests_total", outcome="ok") == mirrored
            assert await metric_sum(gw.url, "fleetgate_shadow_skipped_total") == 0
            # Changing the share through the admin API takes effect at once.
            ep = (await gw.admin.get("/admin/v1/endpoints")).json()
            shadow_id = next(e["id"] for e in ep if e["url"] == shadow)
            r = await gw.admin.patch(f"/admin/v1/endpoints/{shadow_id}", json={"mirror_percent": 0})
            assert r.status_code == 200, r.text
            before = engine.faults.requests
            await fire(gw.url, key, [BODY] * 50)
            await shadows_settled(gw)
            assert engine.faults.requests == before


async def test_failing_shadow_is_invisible_unbilled_and_leaves_health_alone(tmp_path):
    """Every shadow copy fails (500): clients still get 100 % OK from stable; the lake holds the live
    requests only; spend equals the live usage; the shadow endpoint is not ejected."""
    settings = gateway_settings(tmp_path, usage_sink="spool", eject_after_failures=2)
    async with sim_pod("m") as stable, shadow_pod(error_rate=1.0) as (shadow, engine):
        async with running_gateway(settings) as gw:
            key, shadow_ep = await setup_fleet(gw, stable, shadow, 100, input_price=IN_PRICE,
                                               output_price=OUT_PRICE)
            r = await gw.admin.post("/admin/v1/budgets", json={"org": "acme", "usd": 100, "period": "total"})
            assert r.status_code == 200, r.text
            stream = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
            results = await fire(gw.url, key, [BODY] * 80 + [stream] * 20)
            assert [status for status, _ in results] == [200] * 100
            assert set().union(*(seen["models"] for _, seen in results)) == {"m"}
            await shadows_settled(gw)
            assert engine.faults.requests == 100
            assert await metric_sum(gw.url, "fleetgate_shadow_requests_total", outcome="error") == 100

            live_micros = sum(seen["usage"]["prompt_tokens"] * 3 + seen["usage"]["completion_tokens"] * 7
                              for _, seen in results)
            await gw.app[appkeys.DATAPLANE].sink.flush()
            with LakeQuery(lake_config(settings)) as lake:
                rows = lake.sql("select release, endpoint, status, cost_micros from usage").to_pylist()
            assert len(rows) == 100
            assert {(row["release"], row["endpoint"], row["status"]) for row in rows} == {
                ("m-production", stable, 200)}
            assert sum(row["cost_micros"] for row in rows) == live_micros

            async def settled() -> dict | None:
                budget = (await gw.admin.get("/admin/v1/budgets/acme")).json()[0]
                return budget if budget["reserved_micros"] == 0 else None

            budget = await eventually(settled, what="every reservation to settle")
            assert budget["spent_micros"] == live_micros
            assert await metric_sum(gw.url, "fleetgate_spend_usd_total") == pytest.approx(live_micros / 1e6)

            # 100 failures in a row would have ejected a live endpoint twice over; shadows leave health alone.
            state = next(s for s in gw.app[appkeys.REGISTRY].get("m", "production").states
                         if s.id == shadow_ep["id"])
            assert (state.consecutive_failures, state.ejected) == (0, False)
            assert await metric_sum(gw.url, "fleetgate_endpoint_ejections_total") == 0


async def test_streaming_shadows_measure_ttft(tmp_path):
    async with sim_pod("m") as stable, shadow_pod(ttft_ms=40) as (shadow, engine):
        async with running_gateway(gateway_settings(tmp_path)) as gw:
            key, _ = await setup_fleet(gw, stable, shadow, 100)
            stream = {**BODY, "stream": True}
            results = await fire(gw.url, key, [stream] * 10 + [BODY] * 5, concurrency=8)
            assert [status for status, _ in results] == [200] * 15
            assert set().union(*(seen["models"] for _, seen in results)) == {"m"}
            await shadows_settled(gw)
            labels = {"release": "m-production-canary", "traffic": "shadow"}
            assert await metric_sum(gw.url, "fleetgate_release_requests_total", outcome="ok", **labels) == 15
            assert await metric_sum(gw.url, "fleetgate_release_ttft_seconds_count", **labels) == 10
            assert await metric_sum(gw.url, "fleetgate_release_latency_seconds_count", **labels) == 15
            fast = await metric_sum(gw.url, "fleetgate_release_ttft_seconds_bucket", le="0.03", **labels)
            assert fast == 0  # every first token took the pod's 40 ms


async def test_copy_leaves_with_the_live_request_and_is_cancelled_at_shutdown(tmp_path):
    """The copy is sent while the live request is still running (not after it); a gateway shutting
    down cancels copies in flight instead of waiting for them; over the in-flight cap a copy is
    skipped and counted; clients never wait for a shadow."""
    settings = gateway_settings(tmp_path, shadow_max_in_flight=2)
    async with counted_pod("m", ttft_ms=400) as (stable, stable_engine), \
            shadow_pod(ttft_ms=30_000) as (shadow, engine):
        gw_cm = running_gateway(settings)
        gw = await gw_cm.__aenter__()
        try:
            key, _ = await setup_fleet(gw, stable, shadow, 100)
            async with aiohttp.ClientSession() as session:
                live = asyncio.create_task(chat(session, gw.url, key, BODY))

                async def copied() -> bool:
                    return engine.faults.requests == 1

                await eventually(copied, timeout=2, what="the copy to reach the shadow pod")
                assert not live.done()  # the live answer takes 400 ms; the copy left with it
                assert (await live)[0] == 200
            # Two copies are now stuck on the 30 s pod at most: the rest are skipped, clients unaffected.
            started = time.monotonic()
            results = await fire(gw.url, key, [{**BODY, "max_tokens": 1}] * 6, concurrency=6)
            assert [status for status, _ in results] == [200] * 6
            assert time.monotonic() - started < 5
            assert gw.app[appkeys.DATAPLANE].shadows.in_flight == 2
            assert await metric_sum(gw.url, "fleetgate_shadow_skipped_total", release="m-production-canary") == 5
        finally:
            started = time.monotonic()
            await gw_cm.__aexit__(None, None, None)
        assert time.monotonic() - started < 5, "shutdown waited for the shadow copies"
        assert gw.app[appkeys.DATAPLANE].shadows.in_flight == 0

        async def abandoned() -> bool:  # the pod saw the cancelled copies' connections close
            return engine.metrics.running == 0

        await eventually(abandoned, timeout=5, what="the shadow pod to see the copies abandoned")


async def test_copies_ask_for_the_name_the_shadow_pod_serves(tmp_path):
    """The new release serves the model under another name (as vLLM's --served-model-name): the copy
    asks for that name, as the prober learnt it from the pod's /v1/models."""
    async with sim_pod("m") as stable, counted_pod("m", served_model_name="m-v2") as (shadow, engine):
        async with running_gateway(gateway_settings(tmp_path)) as gw:
            key, shadow_ep = await setup_fleet(gw, stable, shadow, 100)

            async def learnt() -> bool:
                states = gw.app[appkeys.REGISTRY].get("m", "production").states
                return any(s.id == shadow_ep["id"] and s.served_model == "m-v2" for s in states)

            await eventually(learnt, what="the prober to learn the shadow pod's served name")
            results = await fire(gw.url, key, [BODY] * 10 + [{**BODY, "stream": True}] * 10)
            assert [status for status, _ in results] == [200] * 20
            await shadows_settled(gw)
            assert engine.faults.requests == 20
            assert await metric_sum(gw.url, "fleetgate_shadow_requests_total", outcome="ok") == 20
