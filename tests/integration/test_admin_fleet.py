"""`GET /admin/v1/fleet`: every model × environment in one answer, counters that move with real traffic."""

from __future__ import annotations

import pytest

from tests.fleet import gateway_settings, running_gateway
from tests.integration.test_shadow import BODY, counted_pod, fire
from tests.support import eventually


def row(answer: dict, model: str, env: str = "production") -> dict:
    return next(m for m in answer["models"] if (m["model"], m["environment"]) == (model, env))


async def test_fleet_counts_traffic_per_model_and_reports_endpoints(tmp_path):
    """Model m serves 20 unary + 5 streamed + 2 too-long requests; model bad's only pod fails every one."""
    async with counted_pod("m", ttft_ms=5) as (good, _), counted_pod("bad", error_rate=1.0) as (failing, _), \
            counted_pod("m", ttft_ms=5) as (canary, _):
        async with running_gateway(gateway_settings(tmp_path, eject_after_failures=1000)) as gw:
            await gw.create_org()
            await gw.register("m", good, release="m-stable")
            await gw.register("m", canary, release="m-next", weight=0, status="disabled")
            await gw.register("bad", failing, release="bad-stable")
            key = (await gw.create_key())["key"]
            first = (await gw.admin.get("/admin/v1/fleet")).json()
            assert [(m["model"], m["environment"]) for m in first["models"]] == [("bad", "production"),
                                                                                 ("m", "production")]
            assert row(first, "m")["requests"] == 0 and row(first, "m")["endpoints"]["total"] == 2

            bodies = [BODY] * 20 + [{**BODY, "stream": True}] * 5 + [{**BODY, "max_tokens": 100_000}] * 2
            await fire(gw.url, key, bodies + [{**BODY, "model": "bad"}] * 4)

            r = await gw.admin.get("/admin/v1/fleet")
            assert r.status_code == 200, r.text
            a = r.json()
            assert a["boot_id"] == first["boot_id"] and a["now"] >= first["now"]
            assert a["latency_bounds_ms"][-1] is None and a["ttft_bounds_ms"][-1] is None
            m = row(a, "m")
            assert m["status"] == "active"
            assert (m["requests"], m["errors"], m["client_errors"]) == (27, 0, 2)
            assert sum(m["latency_buckets"]) == 27 and len(m["latency_buckets"]) == len(a["latency_bounds_ms"])
            assert m["latency_sum_ms"] >= 25 * 5  # the pod waits 5 ms before its first token
            assert m["ttft_count"] == sum(m["ttft_buckets"]) == 5
            assert len(m["ttft_buckets"]) == len(a["ttft_bounds_ms"])
            ends = m["endpoints"]
            assert (ends["total"], ends["ready"], ends["ejected"], ends["in_flight"]) == (2, 1, 0, 0)
            assert {e["release"]: e["status"] for e in m["endpoint_list"]} == {"m-stable": "ready",
                                                                                "m-next": "disabled"}
            bad = row(a, "bad")
            assert bad["requests"] == bad["errors"] == 4 and sum(bad["latency_buckets"]) == 4

            async def probed() -> dict | None:
                m = row((await gw.admin.get("/admin/v1/fleet", params={"model": "m"})).json(), "m")
                return m if m["endpoints"]["kv_usage_max"] is not None else None

            m = await eventually(probed, timeout=10, what="the prober's vLLM metrics in the fleet answer")
            assert m["endpoints"]["waiting"] == 0 and 0 <= m["endpoints"]["kv_usage_max"] <= 1


async def test_fleet_filters_and_refuses_bad_input(tmp_path):
    async with counted_pod("m") as (url, _):
        async with running_gateway(gateway_settings(tmp_path)) as gw:
            await gw.register("m", url)
            await gw.register("m", url, environment="staging")
            await gw.register("other", url)
            fleet = "/admin/v1/fleet"
            names = lambda r: [(m["model"], m["environment"]) for m in r.json()["models"]]  # noqa: E731
            assert names(await gw.admin.get(fleet, params={"model": "m"})) == [("m", "production"), ("m", "staging")]
            assert names(await gw.admin.get(fleet, params={"env": "staging"})) == [("m", "staging")]
            assert names(await gw.admin.get(fleet, params={"model": "m", "env": "production"})) == [("m", "production")]
            assert names(await gw.admin.get(fleet, params={"model": "nobody"})) == []

            for params, param in (({"model": "bad name!"}, "model"), ({"env": "x" * 65}, "env"),
                                  ({"env": "a\nb"}, "env"), ({"modle": "m"}, "modle")):
                r = await gw.admin.get(fleet, params=params)
                assert r.status_code == 400, (params, r.text)
                error = r.json()["error"]
                assert error["param"] == param and error["type"] == "invalid_request_error", error
            r = await gw.admin.get(fleet, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_admin_token"


@pytest.mark.parametrize("query", ["model=", "env="])
async def test_fleet_empty_filter_means_no_filter(tmp_path, query):
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        r = await gw.admin.get("/admin/v1/fleet?" + query)
        assert r.status_code == 200 and r.json()["models"] == []
