"""Endpoint health: vLLM metrics parsing, passive ejection with half-open retry, active probes over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

from gateway.app import _health_writer
from gateway.errors import ConfigError
from gateway.routing.balancer import Balancer, EndpointState, acquire
from gateway.routing.health import HealthProber, PassiveHealth, ProbeResult
from gateway.routing.registry import Registry
from gateway.routing.vllm_metrics import VllmLoad, parse_vllm_metrics
from gateway.store import open_store
from opsctl.sim import SimConfig, create_sim_app
from tests.support import free_port
from tests.unit.test_routing import endpoint

# --- vLLM metrics -----------------------------------------------------------------------


def vllm_text(*, kv_name: str = "vllm:kv_cache_usage_perc", models: dict[str, tuple[float, float, float]]) -> str:
    """Exposition as prometheus_client writes it (vLLM uses it), histograms included."""
    registry = CollectorRegistry()
    waiting = Gauge("vllm:num_requests_waiting", "w", ["model_name", "engine"], registry=registry)
    running = Gauge("vllm:num_requests_running", "r", ["model_name", "engine"], registry=registry)
    kv = Gauge(kv_name, "kv", ["model_name", "engine"], registry=registry)
    ttft = Histogram("vllm:time_to_first_token_seconds", "t", ["model_name"], registry=registry)
    for name, (w, r, k) in models.items():
        waiting.labels(name, "0").set(w)
        running.labels(name, "0").set(r)
        kv.labels(name, "0").set(k)
        ttft.labels(name).observe(0.2)
    return generate_latest(registry).decode()


@pytest.mark.parametrize("kv_name", ["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"])
def test_parses_prometheus_client_output_with_current_and_legacy_kv_name(kv_name):
    text = vllm_text(kv_name=kv_name, models={"llama": (4, 2, 0.25)})
    assert parse_vllm_metrics(text) == VllmLoad(waiting=4.0, running=2.0, kv_usage=0.25)


def test_prefers_current_kv_name_when_both_are_present():
    text = vllm_text(models={"m": (0, 0, 0.7)}) + 'vllm:gpu_cache_usage_perc{model_name="m"} 0.1\n'
    assert parse_vllm_metrics(text).kv_usage == 0.7


def test_selects_series_by_model_name_and_falls_back_to_all():
    text = vllm_text(models={"a": (1, 1, 0.2), "b": (5, 3, 0.9)})
    assert parse_vllm_metrics(text, "a") == VllmLoad(waiting=1.0, running=1.0, kv_usage=0.2)
    # Served under another name: every series counts; counts add up, KV use is the fullest.
    assert parse_vllm_metrics(text, "other") == VllmLoad(waiting=6.0, running=4.0, kv_usage=0.9)


def test_sums_engines_of_one_model_and_reads_timestamps_escapes_and_quoted_names():
    text = (
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{engine="0",model_name="m\\"q"} 2 1700000000000\n'
        'vllm:num_requests_waiting{model_name="m\\"q",engine="1"} 3\n'
        'vllm:num_requests_waiting_by_reason{model_name="m\\"q"} 99\n'
        '{"vllm:num_requests_running",model_name="m\\"q"} 7\n'
        "vllm:kv_cache_usage_perc 0.5"
    )
    assert parse_vllm_metrics(text, 'm"q') == VllmLoad(waiting=5.0, running=7.0, kv_usage=0.5)


@pytest.mark.parametrize("garbage", [
    "", "not metrics at all", "vllm:num_requests_waiting{model_name=\"x\" 3\n", "vllm:num_requests_waiting abc",
    "vllm:num_requests_waiting NaN\nvllm:kv_cache_usage_perc +Inf", "\x00\xff{{}}\n\n", "vllm:num_requests_waiting",
])
def test_garbage_gives_empty_load_not_an_error(garbage):
    assert parse_vllm_metrics(garbage) == VllmLoad()


def test_parses_the_simulators_exposition():
    sim_metrics = pytest.importorskip("opsctl.sim.metrics")
    assert parse_vllm_metrics(sim_metrics.SimMetrics("sim", 8).render(), "sim") == VllmLoad(0.0, 0.0, 0.0)


# --- passive ejection -------------------------------------------------------------------


@dataclass
class Events:
    ejected: list[str] = field(default_factory=list)
    readmitted: list[str] = field(default_factory=list)

    def policy(self, **kw) -> PassiveHealth:
        return PassiveHealth(on_eject=lambda s: self.ejected.append(s.id),
                             on_readmit=lambda s: self.readmitted.append(s.id), **kw)


def test_ejects_after_n_consecutive_failures_only():
    events, s = Events(), EndpointState(endpoint("a"))
    health = events.policy(failure_threshold=3, cooldown_s=10)
    assert not health.record_failure(s, 0.0) and not health.record_failure(s, 0.1)
    health.record_success(s, 0.2)  # streak broken
    assert [health.record_failure(s, t) for t in (1.0, 1.1, 1.2)] == [False, False, True]
    assert events.ejected == ["a"] and s.ejected_until == pytest.approx(11.2)
    assert not s.available(11.1) and s.available(11.2)


def test_half_open_trial_success_readmits():
    events, s, balancer = Events(), EndpointState(endpoint("a")), Balancer()
    health = events.policy(failure_threshold=1, cooldown_s=10)
    assert health.record_failure(s, 0.0)
    assert not health.record_success(s, 5.0)  # an old request finishing during the cool-down
    assert balancer.pick([s], now=5.0) is None
    with acquire(balancer.pick([s], now=10.0)) as trial:
        assert trial.trial and balancer.pick([s], now=10.5) is None  # one trial at a time
        assert health.record_success(s, 10.6)
    assert events.readmitted == ["a"] and not s.ejected and s.consecutive_failures == 0
    assert balancer.pick([s], now=10.7) is s and s.in_flight == 0


def test_failed_trial_doubles_the_cooldown_up_to_the_max():
    events, s = Events(), EndpointState(endpoint("a"))
    health = events.policy(failure_threshold=2, cooldown_s=10, max_cooldown_s=25)
    health.record_failure(s, 0.0)
    health.record_failure(s, 0.0)
    assert not health.record_failure(s, 3.0)  # during the cool-down: not another ejection
    now, cooldowns = 10.0, []
    for _ in range(3):
        with acquire(s):
            assert health.record_failure(s, now)
        cooldowns.append(s.cooldown_s)
        now = s.ejected_until
    assert cooldowns == [20, 25, 25] and len(events.ejected) == 4
    with acquire(s):
        health.record_success(s, now)
    health.record_failure(s, now)
    health.record_failure(s, now)
    assert s.cooldown_s == 10  # a re-admitted endpoint starts from the base cool-down again


@pytest.mark.parametrize("kw", [{"failure_threshold": 0}, {"cooldown_s": 0}, {"cooldown_s": 10, "max_cooldown_s": 5}])
def test_bad_passive_policy_is_rejected(kw):
    with pytest.raises(ConfigError):
        PassiveHealth(**kw)


# --- active probes over real HTTP -------------------------------------------------------


class Pod:
    """A tiny vLLM stand-in on loopback whose /health status and /metrics text a test sets."""

    def __init__(self) -> None:
        self.port = free_port()
        self.health_status = 200
        self.metrics: str | None = vllm_text(models={"llama": (3, 5, 0.4)})
        self.hang = False
        self.models: bytes | None = None  # the /v1/models body; None: the route answers 404
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _health(self, request: web.Request) -> web.Response:
        if self.hang:
            await asyncio.sleep(30)
        return web.Response(status=self.health_status, text="")

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.metrics is None:
            raise web.HTTPNotFound()
        return web.Response(text=self.metrics, content_type="text/plain")

    async def _models(self, request: web.Request) -> web.Response:
        if self.models is None:
            raise web.HTTPNotFound()
        return web.Response(body=self.models, content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/models", self._models)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def pod():
    server = Pod()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


async def eventually(predicate: Callable[[], object], *, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def pod_state(url: str) -> EndpointState:
    return EndpointState(endpoint("p", url=url), model_name="llama")


async def test_probe_of_a_healthy_pod_reads_its_load(pod, session):
    s = pod_state(pod.url + "/v1")  # registry URLs may carry the OpenAI prefix
    result = await HealthProber(session, 1.0, 2.0).check(s)
    assert result.healthy and result.status == 200 and result.error is None
    assert (s.waiting, s.running, s.kv_usage) == (3.0, 5.0, 0.4) and s.healthy
    assert result.summary == "healthy" and result.checked_at.tzinfo is not None
    assert result.served_models == () and s.served_model is None  # no /v1/models: the registry name is sent


async def test_503_marks_unhealthy_and_200_readmits(pod, session):
    s, prober = pod_state(pod.url), HealthProber(session, 1.0, 2.0)
    pod.health_status = 503
    result = await prober.check(s)
    assert not result.healthy and result.status == 503 and result.summary == "unhealthy: HTTP 503"
    assert not s.available(0.0) and Balancer().pick([s], now=0.0) is None
    pod.health_status = 200
    assert (await prober.check(s)).healthy and s.available(0.0)


async def test_failure_threshold_tolerates_a_single_failed_probe(pod, session):
    s, prober = pod_state(pod.url), HealthProber(session, 1.0, 2.0, failure_threshold=2)
    pod.health_status = 500
    await prober.check(s)
    assert s.healthy
    await prober.check(s)
    assert not s.healthy


async def test_missing_metrics_keep_the_pod_healthy(pod, session):
    pod.metrics = None
    s = pod_state(pod.url)
    s.waiting = 9.0
    result = await HealthProber(session, 1.0, 2.0).check(s)
    assert result.healthy and s.healthy and s.waiting is None and s.kv_usage is None


async def test_hanging_health_times_out_as_unhealthy(pod, session):
    pod.hang = True
    started = asyncio.get_running_loop().time()
    result = await HealthProber(session, 1.0, 0.3).check(pod_state(pod.url))
    assert not result.healthy and result.error == "timeout" and result.status is None
    assert asyncio.get_running_loop().time() - started < 2.0


async def test_unreachable_or_malformed_url_is_unhealthy_without_leaking_it(session):
    for url in (f"http://user:secret@127.0.0.1:{free_port()}", "http://", "http://[bad", "http://h:99999", "nonsense"):
        result = await HealthProber(session, 1.0, 0.5).probe(pod_state(url))
        assert not result.healthy and result.status is None
        assert "secret" not in result.error and "127.0.0.1" not in result.error


@pytest.mark.parametrize("kw", [{"interval_s": 0}, {"timeout_s": -1}, {"failure_threshold": 0}, {"max_concurrency": 0}])
async def test_bad_prober_settings_are_rejected(session, kw):
    with pytest.raises(ConfigError):
        HealthProber(session, **{"interval_s": 1.0, "timeout_s": 1.0, **kw})


async def test_run_loop_ejects_a_stopped_pod_and_readmits_it_when_back(pod, session):
    s, other = pod_state(pod.url), EndpointState(endpoint("gone", url=f"http://127.0.0.1:{free_port()}"))
    seen: list[tuple[str, bool]] = []

    async def on_result(state: EndpointState, result: ProbeResult) -> None:
        seen.append((state.id, result.healthy))

    prober = HealthProber(session, interval_s=0.05, timeout_s=0.5)
    task = asyncio.create_task(prober.run(lambda: [s, other], on_result))
    try:
        await eventually(lambda: ("p", True) in seen and ("gone", False) in seen, what="first round")
        await pod.stop()
        await eventually(lambda: not s.healthy, what="stopped pod marked unhealthy")
        assert Balancer().pick([s]) is None
        await pod.start()
        await eventually(lambda: s.healthy and s.kv_usage == 0.4, what="restarted pod re-admitted")
        assert Balancer().pick([s]) is s
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_survives_a_failing_result_sink(pod, session):
    calls = 0

    def broken_sink(state: EndpointState, result: ProbeResult) -> None:
        nonlocal calls
        calls += 1
        raise OSError("store unreachable")

    s = pod_state(pod.url)
    s.healthy = False
    prober = HealthProber(session, interval_s=0.02, timeout_s=0.5)
    task = asyncio.create_task(prober.run(lambda: [s], broken_sink))
    try:
        await eventually(lambda: calls >= 3, what="several rounds despite sink errors")
        assert prober.callback_errors >= 3 and s.healthy
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_probe_against_the_simulator(session):
    sim = pytest.importorskip("opsctl.sim")
    if not hasattr(sim, "create_sim_app"):
        pytest.skip("opsctl.sim.create_sim_app not available yet")
    port = free_port()
    runner = web.AppRunner(sim.create_sim_app(sim.SimConfig(model="sim-model", port=port)))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        s = EndpointState(endpoint("sim", url=f"http://127.0.0.1:{port}/v1"), model_name="sim-model")
        result = await HealthProber(session, 1.0, 2.0).check(s)
        assert result.healthy and s.waiting == 0.0 and s.running == 0.0 and s.kv_usage == 0.0
    finally:
        await runner.cleanup()


# --- served model names (/v1/models) ------------------------------------------------------


@contextlib.asynccontextmanager
async def sim_pod(**fields: object) -> AsyncIterator[str]:
    port = free_port()
    runner = web.AppRunner(create_sim_app(SimConfig(model="/models/weights", port=port, **fields)))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


async def test_a_pod_serving_the_model_under_another_name_is_healthy_and_named(session):
    async with sim_pod(served_model_name="org/model-v2", max_num_seqs=4) as url:
        s = EndpointState(endpoint("sim", url=url), model_name="m")
        result = await HealthProber(session, 1.0, 2.0).check(s)
    assert result.healthy and result.served_models == ("org/model-v2",)
    assert s.served_model == "org/model-v2" and s.healthy
    assert (s.waiting, s.running, s.kv_usage) == (0.0, 0.0, 0.0)


async def test_a_pod_listing_the_registry_name_among_others_is_sent_that_name(session):
    async with sim_pod(served_model_name=["alias", "m"]) as url:
        s = EndpointState(endpoint("sim", url=url), model_name="m")
        assert (await HealthProber(session, 1.0, 2.0).check(s)).healthy
    assert s.served_model == "m"


async def test_a_pod_serving_several_other_names_is_unhealthy_and_says_why(session):
    async with sim_pod(served_model_name=["a", "b"]) as url:
        s = EndpointState(endpoint("sim", url=url), model_name="m")
        result = await HealthProber(session, 1.0, 2.0).check(s)
    assert not result.healthy and result.status == 200 and result.error == "serves a, b; not m"
    assert result.summary == "unhealthy: serves a, b; not m"
    assert not s.healthy and s.served_model is None and Balancer().pick([s]) is None


async def test_an_unreadable_listing_keeps_the_known_name_and_a_404_forgets_it(pod, session):
    s, prober = pod_state(pod.url), HealthProber(session, 1.0, 2.0)
    pod.models = orjson.dumps({"object": "list", "data": [{"id": "served-llama", "object": "model"}]})
    pod.metrics = vllm_text(models={"other": (1, 1, 0.2), "served-llama": (5, 3, 0.9)})
    await prober.check(s)
    assert s.served_model == "served-llama" and s.healthy
    assert (s.waiting, s.running) == (5.0, 3.0)  # vLLM labels series with the served name, not the registry's
    for garbage in (b"<html>502</html>", b'{"data": 5}', b'{"data": [{"id": 7}]}', b"[]"):
        pod.models = garbage
        result = await prober.check(s)
        assert result.healthy and result.served_models is None and s.served_model == "served-llama"
    pod.models = None
    assert (await prober.check(s)).served_models == () and s.served_model is None


async def test_the_registry_names_states_and_the_writer_records_why_a_pod_is_unhealthy(session, tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'fleetgate.db'}")
    await store.open()
    try:
        async with sim_pod(served_model_name=["a", "b"]) as wrong, sim_pod(served_model_name="org/m") as renamed:
            model = await store.create_model("m", "production")
            bad = await store.add_endpoint(model.id, wrong)
            good = await store.add_endpoint(model.id, renamed, release="canary")
            registry = Registry(store)
            assert await registry.load_all()
            states = {s.id: s for s in registry.all_states()}
            assert {s.model_name for s in states.values()} == {"m"}
            await HealthProber(session, 1.0, 2.0).check_all(states.values(), _health_writer(store))
        assert states[good.id].served_model == "org/m" and states[good.id].healthy
        recorded = {e.id: e for e in await store.list_endpoints(model.id)}
        assert (recorded[bad.id].status, recorded[bad.id].last_health) == ("unhealthy", "unhealthy: serves a, b; not m")
        assert (recorded[good.id].status, recorded[good.id].last_health) == ("ready", "healthy")
    finally:
        await store.close()
