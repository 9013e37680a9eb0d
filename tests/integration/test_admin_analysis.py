"""The rollout engine's data-plane API: `GET /admin/v1/analysis` and `POST /admin/v1/endpoints/{id}/smoke`."""

from __future__ import annotations

from collections import Counter

import pytest

from analytics_lake.query import LakeQuery
from gateway import appkeys
from gateway.usage import lake_config
from tests.fleet import ADMIN_TOKEN, gateway_settings, running_gateway, sim_pod
from tests.integration.test_shadow import BODY, counted_pod, fire, shadows_settled
from tests.support import free_port

STABLE, CANARY, SHADOW = "m-production", "m-production-canary", "m-production-next"
QUERY = {"model": "m", "env": "production"}


def endpoint_by_url(answer: dict, url: str) -> dict:
    return next(e for e in answer["endpoints"] if e["url"] == url)


async def test_analysis_counts_what_was_sent_per_release(tmp_path):
    """Stable serves, a canary fails every attempt (retried on stable), a third release gets a 50 %
    mirror that fails a third of the time: the figures match what each pod received."""
    async with counted_pod("m", ttft_ms=5) as (stable, stable_pod), \
            counted_pod("m", error_rate=1.0) as (canary, canary_pod), \
            counted_pod("m", error_rate=0.3, seed=3) as (shadow, shadow_pod):
        async with running_gateway(gateway_settings(tmp_path, eject_after_failures=1000)) as gw:
            await gw.create_org()
            await gw.register("m", stable, release=STABLE, weight=80)
            await gw.register("m", canary, release=CANARY, weight=20)
            await gw.register("m", shadow, release=SHADOW, weight=0, status="disabled", mirror_percent=50)
            key = (await gw.create_key())["key"]
            first = (await gw.admin.get("/admin/v1/analysis", params=QUERY)).json()
            assert set(first["releases"]) == {STABLE, CANARY, SHADOW}
            assert first["releases"][STABLE]["live"]["requests"] == 0  # known releases, no traffic yet

            stream = {**BODY, "stream": True}
            too_long = {**BODY, "max_tokens": 100_000}  # refused by the pod: a client error
            results = await fire(gw.url, key, [BODY] * 150 + [stream] * 50 + [too_long] * 4)
            statuses = Counter(status for status, _ in results)
            assert statuses[200] == 200 and statuses[500] == statuses[502] == 0
            await shadows_settled(gw)

            r = await gw.admin.get("/admin/v1/analysis", params=QUERY)
            assert r.status_code == 200, r.text
            a = r.json()
            assert (a["model"], a["environment"]) == ("m", "production")
            assert a["boot_id"] == first["boot_id"]
            bounds = a["bucket_bounds_ms"]
            assert bounds[0] == 1.0 and bounds[-2] == 120_000.0 and bounds[-1] is None
            assert all(x < y for x, y in zip(bounds[:-2], bounds[1:-1], strict=True))
            assert all(1.2 <= y / x <= 1.3 for x, y in zip(bounds[:-3], bounds[1:-2], strict=True))

            live_stable, live_canary = a["releases"][STABLE]["live"], a["releases"][CANARY]["live"]
            assert live_stable["requests"] == stable_pod.faults.requests
            assert live_stable["errors"] == 0
            # The 400s came from whichever pod the 4 requests were sent to first (canary 500s are retried).
            assert live_stable["client_errors"] + live_canary["client_errors"] == 4
            assert live_stable["requests"] - live_stable["client_errors"] == 200
            assert live_canary["requests"] == canary_pod.faults.requests
            assert live_canary["errors"] == live_canary["requests"] - live_canary["client_errors"] > 0
            assert sum(live_stable["latency_buckets"]) == 200 and sum(live_canary["latency_buckets"]) == 0
            assert len(live_stable["latency_buckets"]) == len(bounds)
            assert live_stable["ttft_count"] == sum(live_stable["ttft_buckets"]) == 50
            assert live_stable["latency_sum_ms"] >= 200 * 5  # every attempt waited the pod's 5 ms
            assert not any(n for n, bound in zip(live_stable["latency_buckets"], bounds[:-1]) if bound < 5.0)
            assert a["releases"][STABLE]["shadow"]["requests"] == 0

            mirrored = a["releases"][SHADOW]["shadow"]
            assert mirrored["requests"] == shadow_pod.faults.requests == 204 // 2  # mirrors every request forwarded
            assert 0 < mirrored["errors"] < mirrored["requests"]
            assert 0 <= mirrored["client_errors"] <= 4  # the pod refuses the too-long copies, if any was due
            ok = mirrored["requests"] - mirrored["errors"] - mirrored["client_errors"]
            assert sum(mirrored["latency_buckets"]) == ok
            assert a["releases"][SHADOW]["live"]["requests"] == 0

            ep = endpoint_by_url(a, shadow)
            probed = ("served_model", "waiting", "running", "kv_usage")  # the prober's last reading of the pod
            assert {k: v for k, v in ep.items() if k not in probed} == {
                "id": ep["id"], "url": shadow, "release": SHADOW, "status": "disabled", "weight": 0,
                "mirror_percent": 50.0, "routed": True, "in_flight": 0, "healthy": True, "ejected": False}
            assert set(probed) <= set(ep)
            assert endpoint_by_url(a, stable)["weight"] == 80


async def test_boot_id_names_the_life_of_the_counters(tmp_path):
    ids = []
    for run in range(2):
        async with running_gateway(gateway_settings(tmp_path / str(run))) as gw:
            await gw.register("m", None)
            a = (await gw.admin.get("/admin/v1/analysis", params=QUERY)).json()
            assert a["releases"] == {} and a["endpoints"] == []
            assert (await gw.admin.get("/admin/v1/analysis", params=QUERY)).json()["boot_id"] == a["boot_id"]
            ids.append(a["boot_id"])
    assert ids[0] != ids[1]


async def test_analysis_bad_input(tmp_path):
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        await gw.register("m", None)
        for params, param in (({"env": "production"}, "model"), ({"model": "m"}, "env"),
                              ({"model": "m", "env": ""}, "env"),
                              ({"model": "bad name!", "env": "production"}, "model"),
                              ({"model": "m", "env": "x" * 300}, "env")):
            r = await gw.admin.get("/admin/v1/analysis", params=params)
            assert r.status_code == 400, (params, r.text)
            assert r.json()["error"]["param"] == param
        r = await gw.admin.get("/admin/v1/analysis", params={"model": "nope", "env": "production"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "model"
        r = await gw.admin.get("/admin/v1/analysis", params={"model": "m", "env": "staging"})
        assert r.status_code == 404
        r = await gw.admin.get("/admin/v1/analysis", params=QUERY, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401


# --- smoke ---------------------------------------------------------------------------------------

async def _smoke(gw, endpoint_id: str, body: dict | None = None):
    return await gw.admin.post(f"/admin/v1/endpoints/{endpoint_id}/smoke", json=body)


async def test_smoke_a_disabled_endpoint_passes_without_billing(tmp_path):
    settings = gateway_settings(tmp_path, usage_sink="spool")
    async with sim_pod("m", ttft_ms=20) as pod, sim_pod("e") as embedder:
        async with running_gateway(settings) as gw:
            await gw.create_org()
            ep = (await gw.register("m", pod, release=CANARY, weight=0, status="disabled"))["endpoint"]
            emb = (await gw.register("e", embedder, metadata={"kind": "embeddings"}))["endpoint"]
            r = await gw.admin.post(f"/admin/v1/endpoints/{ep['id']}/smoke")  # no body: the defaults
            assert r.status_code == 200, r.text
            answer = r.json()
            assert (answer["passed"], answer["endpoint_id"], answer["release"]) == (True, ep["id"], CANARY)
            assert len(answer["results"]) == 3
            for result in answer["results"]:
                assert (result["status"], result["error"]) == (200, None)
                assert 20 <= result["ttft_ms"] <= result["latency_ms"]  # chat is streamed: TTFT measured
            answer = (await _smoke(gw, ep["id"], {"requests": 2, "kind": "completions", "timeout_s": 5})).json()
            assert answer["passed"] and [x["status"] for x in answer["results"]] == [200, 200]
            answer = (await _smoke(gw, emb["id"], {"requests": 1})).json()  # the model's kind: embeddings
            assert answer["passed"] and answer["results"][0]["ttft_ms"] is None
            # Never billed, no usage row, not release traffic.
            await gw.app[appkeys.DATAPLANE].sink.flush()
            with LakeQuery(lake_config(settings)) as lake:
                assert lake.sql("select count(*) as n from usage").to_pylist() == [{"n": 0}]
            a = (await gw.admin.get("/admin/v1/analysis", params=QUERY)).json()
            assert a["releases"][CANARY]["live"]["requests"] == a["releases"][CANARY]["shadow"]["requests"] == 0


async def test_smoke_reports_failures_with_their_statuses(tmp_path):
    async with sim_pod("m", error_rate=1.0) as broken:
        async with running_gateway(gateway_settings(tmp_path)) as gw:
            ep = (await gw.register("m", broken, release=CANARY, status="disabled"))["endpoint"]
            answer = (await _smoke(gw, ep["id"], {"requests": 2})).json()
            assert answer["passed"] is False
            assert [x["status"] for x in answer["results"]] == [500, 500]
            assert all(x["error"].startswith("HTTP 500: simulated engine failure") for x in answer["results"])
            dead = (await gw.register("m", f"http://127.0.0.1:{free_port()}", release="dead"))["endpoint"]
            answer = (await _smoke(gw, dead["id"], {"requests": 1, "timeout_s": 2})).json()
            assert answer["passed"] is False and answer["results"][0]["status"] is None
            assert answer["results"][0]["error"] == "Could not connect to the model endpoint (ConnectionRefusedError)."


@pytest.mark.parametrize(("body", "param"), [
    ({"requests": 0}, "requests"), ({"requests": 21}, "requests"), ({"requests": "x"}, "requests"),
    ({"requests": 2.5}, "requests"), ({"kind": "images"}, "kind"), ({"timeout_s": 0}, "timeout_s"),
    ({"timeout_s": 601}, "timeout_s"), ({"nonsense": 1}, "nonsense"),
])
async def test_smoke_bad_input(tmp_path, body, param):
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        ep = (await gw.register("m", "http://127.0.0.1:9", status="disabled"))["endpoint"]
        r = await _smoke(gw, ep["id"], body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"


async def test_smoke_unknown_endpoint_and_auth(tmp_path):
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        r = await _smoke(gw, "ep_nope", {})
        assert r.status_code == 404 and r.json()["error"]["param"] == "endpoint_id"
        r = await gw.admin.post("/admin/v1/endpoints/ep_nope/smoke", content=b"[1]",
                                headers={"Content-Type": "application/json"})
        assert r.status_code == 400
        r = await gw.admin.post("/admin/v1/endpoints/ep_nope/smoke", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
        assert ADMIN_TOKEN not in r.text
