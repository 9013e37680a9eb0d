"""Per-release metrics of live traffic: one count per upstream attempt, for the endpoint tried.

A canary's 500 that the gateway retried on stable is the canary's error and stable's success; the
client sees one 200. Latency and TTFT are each attempt's own upstream time. Requests that never
reached an endpoint are not release traffic. With several worker processes the analysis API sums
every worker's counters.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx

from tests.fleet import gateway_settings, running_gateway, sim_pod
from tests.integration.test_shadow import BODY, counted_pod, fire, metric_samples, metric_sum
from tests.support import free_port, wait_for

STABLE, CANARY = "m-production", "m-production-canary"


async def test_a_retried_canary_500_is_the_canarys_error_and_stables_success(tmp_path):
    """The issue's bad release: the canary answers 30 % of requests with a 500. Non-streaming and
    streaming clients see no error at all (retried before the first byte); the canary's release
    carries every one of those 500s."""
    async with counted_pod("m") as (stable, stable_pod), \
            counted_pod("m", error_rate=0.3, seed=11) as (canary, canary_pod):
        async with running_gateway(gateway_settings(tmp_path, eject_after_failures=1000)) as gw:
            await gw.create_org()
            await gw.register("m", stable, release=STABLE, weight=50)
            await gw.register("m", canary, release=CANARY, weight=50)
            key = (await gw.create_key())["key"]
            stream = {**BODY, "stream": True}
            results = await fire(gw.url, key, [BODY] * 300 + [stream] * 100)
            assert Counter(status for status, _ in results) == {200: 400}

            live = {"traffic": "live"}
            canary_ok = await metric_sum(gw.url, "fleetgate_release_requests_total", release=CANARY, outcome="ok",
                                         **live)
            canary_errors = await metric_sum(gw.url, "fleetgate_release_requests_total", release=CANARY,
                                             outcome="error", **live)
            stable_ok = await metric_sum(gw.url, "fleetgate_release_requests_total", release=STABLE, outcome="ok",
                                         **live)
            assert canary_errors > 0 and canary_ok > 0
            assert canary_ok + canary_errors == canary_pod.faults.requests  # one count per attempt
            assert stable_ok == stable_pod.faults.requests
            assert await metric_sum(gw.url, "fleetgate_release_requests_total", release=STABLE,
                                    outcome="error") == 0
            assert stable_ok + canary_ok == 400  # every client request succeeded exactly once
            assert await metric_sum(gw.url, "fleetgate_upstream_retries_total") == canary_errors
            # The client-level series are unchanged: one 200 per client request.
            assert await metric_sum(gw.url, "fleetgate_requests_total", status="200") == 400
            assert await metric_sum(gw.url, "fleetgate_release_latency_seconds_count", release=CANARY) == canary_ok


async def test_latency_and_ttft_are_each_attempts_upstream_time(tmp_path):
    async with sim_pod("m", ttft_ms=60) as stable:
        async with running_gateway(gateway_settings(tmp_path)) as gw:
            await gw.create_org()
            await gw.register("m", stable, release=STABLE)
            key = (await gw.create_key())["key"]
            stream = {**BODY, "stream": True}
            too_long = {**BODY, "max_tokens": 100_000}  # the pod refuses it (400): the client's error
            results = await fire(gw.url, key, [BODY] * 10 + [stream] * 10 + [too_long] * 3, concurrency=8)
            assert Counter(status for status, _ in results) == {200: 20, 400: 3}
            labels = {"release": STABLE, "traffic": "live"}
            outcomes = {s.labels["outcome"]: s.value for s in
                        await metric_samples(gw.url, "fleetgate_release_requests_total")}
            assert outcomes == {"ok": 20, "client_error": 3, "error": 0}
            # Only successful attempts are timed; all of them waited for the pod's 60 ms first token.
            assert await metric_sum(gw.url, "fleetgate_release_latency_seconds_count", **labels) == 20
            assert await metric_sum(gw.url, "fleetgate_release_latency_seconds_bucket", le="0.05", **labels) == 0
            assert await metric_sum(gw.url, "fleetgate_release_ttft_seconds_count", **labels) == 10
            assert await metric_sum(gw.url, "fleetgate_release_ttft_seconds_bucket", le="0.05", **labels) == 0
            ttft_sum = await metric_sum(gw.url, "fleetgate_release_ttft_seconds_sum", **labels)
            assert 0.06 * 10 <= ttft_sum < 10 * 1.0


async def test_requests_that_never_reached_an_endpoint_are_not_release_traffic(tmp_path):
    async with sim_pod("m") as stable:
        async with running_gateway(gateway_settings(tmp_path)) as gw:
            await gw.create_org()
            await gw.register("m", stable, release=STABLE)
            await gw.register("empty", None)
            key = (await gw.create_key())["key"]
            results = await fire(gw.url, key, [{**BODY, "model": "nope"}, {**BODY, "model": "empty"},
                                               {**BODY, "messages": "not a list"}])
            assert sorted(status for status, _ in results) == [400, 404, 503]
            results = await fire(gw.url, "sk-not-a-key", [BODY])
            assert results[0][0] == 401
            assert await metric_samples(gw.url, "fleetgate_release_requests_total") == []


# --- several worker processes -------------------------------------------------------------------

TOKEN = "fg-admin-workers"


def _serve(tmp_path: Path, redis_url: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETGATE_", "PROMETHEUS_"))}
    env.update(FLEETGATE_ADMIN_TOKEN=TOKEN, FLEETGATE_STATE_DIR=str(tmp_path / "state"), FLEETGATE_USAGE_SINK="none",
               FLEETGATE_HEALTH_INTERVAL_S="0.5", FLEETGATE_REDIS_URL=redis_url, FLEETGATE_PORT=str(port),
               FLEETGATE_WORKERS="2")
    log = open(tmp_path / "gateway.log", "ab")  # noqa: SIM115 - closed with the process below
    proc = subprocess.Popen([sys.executable, "-m", "opsctl", "gateway", "serve"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    log.close()
    return proc, f"http://127.0.0.1:{port}"


async def test_two_workers_analysis_sums_every_workers_counters(tmp_path, redis_url):
    """`opsctl gateway serve --workers 2`: connections land on either worker; whichever answers the
    analysis API reports the same totals (all workers' files) and the same boot id."""
    proc, url = _serve(tmp_path, redis_url)
    try:
        admin = {"Authorization": f"Bearer {TOKEN}"}
        wait_for(lambda: httpx.get(url + "/v1/status/readyz", timeout=2).status_code == 200, timeout=30,
                 what="the gateway workers")
        async with sim_pod("m") as stable, sim_pod("m") as shadow:
            with httpx.Client(base_url=url, headers=admin, timeout=30) as client:
                client.post("/admin/v1/organizations", json={"name": "acme"}).raise_for_status()
                client.post("/admin/v1/models", json={"name": "m", "endpoint": stable, "release": STABLE})
                client.post("/admin/v1/models", json={"name": "m", "endpoint": shadow, "release": CANARY,
                                                      "weight": 0, "status": "disabled", "mirror_percent": 50})
                key = client.post("/admin/v1/api-keys", json={"org": "acme"}).json()["key"]

            def everywhere() -> bool:  # each worker learns of the model over Redis pub/sub
                return all(httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"]
                           for _ in range(20))

            wait_for(everywhere, timeout=10, what="the model on both workers")
            results = await fire(url, key, [BODY] * 400, concurrency=32)
            assert Counter(status for status, _ in results) == {200: 400}

            def snapshot() -> dict:  # a new connection each time: either worker may answer
                return httpx.get(url + "/admin/v1/analysis", params={"model": "m", "env": "production"},
                                 headers=admin).json()

            def shadows_done() -> bool:
                return snapshot()["releases"][CANARY]["shadow"]["requests"] >= 199

            wait_for(shadows_done, timeout=10, what="the shadow copies to finish")
            answers = [snapshot() for _ in range(10)]
            assert len({a["boot_id"] for a in answers}) == 1
            for a in answers:
                assert a["releases"][STABLE]["live"]["requests"] == 400
                assert sum(a["releases"][STABLE]["live"]["latency_buckets"]) == 400
                # Each worker mirrors exactly half of what it served (±1 each).
                assert 198 <= a["releases"][CANARY]["shadow"]["requests"] <= 202
    finally:
        proc.terminate()
        proc.wait(20)
