"""Every request through the gateway becomes exactly one row in the Parquet lake (local and S3)."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from analytics_lake.query import LakeQuery
from gateway import appkeys
from gateway.usage import lake_config
from tests.fleet import gateway_settings, running_gateway, sim_pod

IN_PRICE, OUT_PRICE = 3.0, 7.0  # USD per 1M tokens = micro-USD per token


async def _traffic(gw, key: str) -> dict[str, int]:
    """A mix of successes, streams, client errors; returns request_id → HTTP status."""
    sent: dict[str, int] = {}
    async with aiohttp.ClientSession() as s:
        async def one(body: dict) -> None:
            rid = uuid.uuid4().hex
            async with s.post(gw.url + "/v1/chat/completions", json=body,
                              headers={"Authorization": f"Bearer {key}", "X-Request-ID": rid}) as r:
                await r.read()
                sent[rid] = r.status

        ok = {"model": "m", "messages": [{"role": "user", "content": "hello lake"}], "max_tokens": 5}
        bodies = [ok] * 30 + [{**ok, "stream": True}] * 10 + [{**ok, "model": "missing"}] * 5
        await asyncio.gather(*(one(b) for b in bodies))
    return sent


async def _check_lake(gw, sent: dict[str, int], org_id: str) -> None:
    await gw.app[appkeys.DATAPLANE].sink.flush()
    settings = gw.app[appkeys.SETTINGS]
    with LakeQuery(lake_config(settings)) as lake:
        rows = lake.sql("select request_id, org_id, status, stream, prompt_tokens, completion_tokens, "
                        "cost_micros, latency_ms, gateway_overhead_ms from usage").to_pylist()
    assert len(rows) == len(sent)
    assert {r["request_id"] for r in rows} == set(sent)
    for r in rows:
        assert r["status"] == sent[r["request_id"]] and r["org_id"] == org_id
        assert r["latency_ms"] > 0
        if r["status"] == 200:
            assert r["completion_tokens"] == 5
            assert r["cost_micros"] == r["prompt_tokens"] * 3 + r["completion_tokens"] * 7
            assert r["gateway_overhead_ms"] is not None
        else:
            assert r["status"] == 404 and r["cost_micros"] == 0
    assert sum(r["stream"] for r in rows) == 10


@pytest.mark.parametrize("where", ["local", "s3"])
async def test_each_request_is_one_row(tmp_path, where, request):
    overrides = {"usage_sink": "spool"}
    if where == "s3":
        s3 = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        overrides.update(lake_url=f"s3://{bucket}/fleet", s3_endpoint=s3.endpoint, s3_access_key="test",
                         s3_secret_key="test")
    async with sim_pod("m") as pod, running_gateway(gateway_settings(tmp_path, **overrides)) as gw:
        org = await gw.create_org()
        await gw.register("m", pod, input_price=IN_PRICE, output_price=OUT_PRICE)
        key = (await gw.create_key())["key"]
        sent = await _traffic(gw, key)
        await _check_lake(gw, sent, org["id"])


async def test_usage_reports_are_scoped_to_the_callers_org(tmp_path):
    async with sim_pod("m") as pod, running_gateway(gateway_settings(tmp_path, usage_sink="spool")) as gw:
        a = await gw.create_org("org-a")
        b = await gw.create_org("org-b")
        await gw.register("m", pod, input_price=IN_PRICE, output_price=OUT_PRICE)
        key_a = (await gw.create_key("org-a"))["key"]
        key_b = (await gw.create_key("org-b"))["key"]
        await _traffic(gw, key_a)
        await _traffic(gw, key_b)
        await gw.app[appkeys.DATAPLANE].sink.flush()

        everyone = (await gw.admin.get("/admin/v1/usage/spend", params={"by": "org"})).json()
        assert {r["org_id"] for r in everyone} == {a["id"], b["id"]}
        only_b = (await gw.admin.get("/admin/v1/usage/spend", params={"org": "org-b"})).json()
        assert [r["org_id"] for r in only_b] == [b["id"]]
        async with aiohttp.ClientSession() as s:
            # Key of org A asks for org B: it still only sees org A.
            async with s.get(gw.url + "/admin/v1/usage/spend", params={"by": "org", "org": "org-b"},
                             headers={"Authorization": f"Bearer {key_a}"}) as r:
                assert r.status == 200
                assert [row["org_id"] for row in await r.json()] == [a["id"]]
            async with s.get(gw.url + "/admin/v1/usage/latency", params={"by": "model"},
                             headers={"Authorization": f"Bearer {key_b}"}) as r:
                rows = {row["model"]: row for row in await r.json()}
                assert set(rows) <= {"m", "missing"} and all(v is not None for v in rows["m"].values())
        errors = (await gw.admin.get("/admin/v1/usage/errors", params={"by": "model"})).json()
        assert {r["model"] for r in errors} == {"m", "missing"}
        for bad in ({"by": "nonsense"}, {"since": "yesterday-ish"}):
            r = await gw.admin.get("/admin/v1/usage/spend", params=bad)
            assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        assert (await gw.admin.get("/admin/v1/usage/nothing")).status_code == 404
        assert (await gw.admin.get("/admin/v1/usage/spend", params={"org": "nope"})).status_code == 404
        async with aiohttp.ClientSession() as s, s.get(gw.url + "/admin/v1/usage/spend") as r:
            assert r.status == 401


async def test_redis_stream_sink_with_the_writer_inside_the_gateway(tmp_path, redis_url):
    settings = gateway_settings(tmp_path, usage_sink="redis-stream", redis_url=redis_url,
                                lake_writer_in_gateway=True, lake_flush_s=0.2)
    async with sim_pod("m") as pod:
        async with running_gateway(settings) as gw:
            org = await gw.create_org()
            await gw.register("m", pod, input_price=IN_PRICE, output_price=OUT_PRICE)
            key = (await gw.create_key())["key"]
            sent = await _traffic(gw, key)
        # the app is closed: the writer wrote and acknowledged its last batch
        with LakeQuery(lake_config(settings)) as lake:
            rows = lake.sql("select request_id, org_id from usage").to_pylist()
    assert sorted(r["request_id"] for r in rows) == sorted(sent)
    assert {r["org_id"] for r in rows} == {org["id"]}


async def test_spend_metric_equals_the_spend_in_the_lake(tmp_path):
    async with sim_pod("m") as pod, running_gateway(gateway_settings(tmp_path, usage_sink="spool")) as gw:
        await gw.create_org()
        await gw.register("m", pod, input_price=IN_PRICE, output_price=OUT_PRICE)
        await _traffic(gw, (await gw.create_key())["key"])
        await gw.app[appkeys.DATAPLANE].sink.flush()
        with LakeQuery(lake_config(gw.app[appkeys.SETTINGS])) as lake:
            lake_usd = lake.sql("select sum(cost_micros) / 1e6 as usd from usage").to_pylist()[0]["usd"]
        async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as r:
            families = {f.name: f for f in text_string_to_metric_families(await r.text())}
        spend = {s.labels["model"]: s.value for s in families["fleetgate_spend_usd"].samples
                 if s.name == "fleetgate_spend_usd_total"}
        assert lake_usd > 0 and spend == {"m": pytest.approx(lake_usd)}  # the 404s cost nothing
