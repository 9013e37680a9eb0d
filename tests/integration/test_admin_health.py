"""`GET /admin/v1/endpoints/{id}/health`: an endpoint's recent health transitions and the prober's view.

A real gateway probes a real simulator pod; the pod is stopped to make the prober mark it unhealthy,
and an operator status change shows as a registry transition.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

from gateway.admin.health import HealthHistory, Transition
from gateway.routing.balancer import EndpointState
from gateway.store.models import Endpoint
from tests.fleet import gateway_settings, running_gateway, sim_pod


async def wait_history(gw, endpoint_id: str, predicate, timeout: float = 10.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        answer = (await gw.admin.get(f"/admin/v1/endpoints/{endpoint_id}/health")).json()
        if predicate(answer):
            return answer
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out; last answer {answer}")
        await asyncio.sleep(0.1)


async def test_history_records_first_sight_probe_failure_and_operator_change(tmp_path):
    settings = gateway_settings(tmp_path, access_log=False, health_interval_s=0.2)
    async with running_gateway(settings) as gw:
        async with contextlib.AsyncExitStack() as pod:
            pod_url = await pod.enter_async_context(sim_pod("demo-chat"))
            endpoint_id = (await gw.register("demo-chat", pod_url))["endpoint"]["id"]
            first = await wait_history(gw, endpoint_id, lambda a: a["history"])
            assert first["endpoint_id"] == endpoint_id and first["url"] == pod_url
            assert (first["model"], first["environment"], first["status"]) == ("demo-chat", "production", "ready")
            assert first["history_limit"] == 50 and isinstance(first["worker"], int)
            assert first["current"]["routed"] is True and first["current"]["healthy"] is True
            assert first["history"][0]["source"] == "observed"
        # The pod is gone: two failed probes later the prober marks it unhealthy, with the reason.
        down = await wait_history(gw, endpoint_id, lambda a: a["history"][0]["status"] == "unhealthy")
        newest = down["history"][0]
        assert newest["source"] == "probe" and newest["healthy"] is False and newest["detail"].startswith("unhealthy")
        assert down["current"]["healthy"] is False and down["status"] == "unhealthy"
        assert datetime.fromisoformat(newest["at"]) >= datetime.fromisoformat(down["history"][-1]["at"])

        r = await gw.admin.patch(f"/admin/v1/endpoints/{endpoint_id}", json={"status": "disabled"})
        assert r.status_code == 200, r.text
        off = await wait_history(gw, endpoint_id, lambda a: a["history"][0]["status"] == "disabled")
        assert off["history"][0]["source"] == "registry"
        sources = [t["source"] for t in off["history"]]
        assert sources.count("probe") == 1  # the event and the sampler did not both record the failure

        one = (await gw.admin.get(f"/admin/v1/endpoints/{endpoint_id}/health", params={"limit": "1"})).json()
        assert one["history"] == off["history"][:1]


async def test_unknown_endpoint_and_bad_limit_are_openai_shaped_errors(tmp_path):
    async with running_gateway(gateway_settings(tmp_path, access_log=False)) as gw:
        r = await gw.admin.get("/admin/v1/endpoints/ep_nope/health")
        assert r.status_code == 404
        error = r.json()["error"]
        assert error["param"] == "endpoint_id" and "ep_nope" in error["message"] and error["type"]
        endpoint_id = (await gw.register("m", "http://127.0.0.1:9"))["endpoint"]["id"]
        for bad in ("0", "51", "x", "-1"):
            r = await gw.admin.get(f"/admin/v1/endpoints/{endpoint_id}/health", params={"limit": bad})
            assert r.status_code == 400, (bad, r.text)
            assert r.json()["error"]["param"] == "limit"
        r = await gw.admin.get(f"/admin/v1/endpoints/{endpoint_id}/health", headers={"Authorization": "Bearer no"})
        assert r.status_code == 401 and "error" in r.json()


def _endpoint(endpoint_id: str, status: str = "ready") -> Endpoint:
    now = datetime.now(UTC)
    return Endpoint(id=endpoint_id, model_id="mdl", url="http://pod", release="stable", weight=100, status=status,
                    last_health=None, last_checked_at=None, created_at=now)


def test_rings_are_bounded_per_endpoint_and_in_number():
    history = HealthHistory(per_endpoint=3, max_endpoints=2)
    now = datetime.now(UTC)
    for i in range(5):
        history.record("a", Transition(now, "probe", "ready", i % 2 == 0, False, f"n{i}"))
    assert [t.detail for t in history.history("a")] == ["n4", "n3", "n2"]
    history.record("b", Transition(now, "observed", "ready", True, False))
    history.record("c", Transition(now, "observed", "ready", True, False))
    assert history.history("a") == []  # the least recently changed endpoint was forgotten
    state = EndpointState(_endpoint("c"))
    assert history.sample([state], now) == 0  # unchanged: nothing recorded
    state.ejected_until = 1.0
    assert history.sample([state], now) == 1 and history.history("c")[0].source == "passive"
