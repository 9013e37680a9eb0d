"""`make test-vllm`: real vLLM releases deployed by the LocalDeployer, behind a real gateway, used through the
official openai SDK — what no simulator can prove.

Chat, streaming and embeddings are billed at vLLM's own token counts (its /tokenize and its /metrics counters,
not the gateway's arithmetic); the prober reads health and load from the real server; and a canary from one
real release to another, driven by `opsctl rollout start`, never fails a client request.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from analytics_lake.query import LakeQuery
from gateway import appkeys
from gateway.settings import Settings
from gateway.usage import lake_config
from opsctl.client import AdminClient
from opsctl.deploy import DeployerOptions, ReleaseNotFound, make_deployer
from opsctl.deploy.local import LocalDeployer
from opsctl.deploy.naming import release_name
from opsctl.deploy.processes import ProcessRecord, is_ours
from opsctl.deploy.registry_sync import sync_endpoints
from tests.fleet import ADMIN_TOKEN, Gateway, gateway_settings, running_gateway
from tests.support import wait_for
from tests.vllm import CHAT_MODEL, START_TIMEOUT_S, VllmInstall, require_vllm

# The first test also waits for both servers to start (they share a core with everything else here).
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(START_TIMEOUT_S + 120)]

ENV = "production"  # where keys route by default
CHAT = CHAT_MODEL
EMBED = "minilm"
EMBED_DIMS = 384
IN_PRICE, OUT_PRICE = 1.0, 2.0  # USD per 1M tokens = micro-USD per token
# A CPU pod answers slowly: the gateway must wait for it rather than time out.
SLOW_POD = {"upstream_first_byte_timeout_s": 120.0, "upstream_token_timeout_ms": 5000.0, "health_interval_s": 0.5}
CHAT_ARGS = ["--max-model-len", "2048", "--dtype", "bfloat16", "--enforce-eager", "--uvicorn-log-level", "warning"]
# The canary's release differs in one visible way: a shorter context (vLLM reports it in /v1/models).
CANARY_ARGS = ["--max-model-len", "1024", "--dtype", "bfloat16", "--enforce-eager", "--uvicorn-log-level", "warning"]
EMBED_ARGS = ["--runner", "pooling", "--dtype", "float32", "--uvicorn-log-level", "warning"]
MESSAGES = [{"role": "user", "content": "Name a colour."}]
CANARY_TIMEOUT_S = 480


def _local_values(model: str, install: VllmInstall, path: Path, args: list[str]) -> dict[str, Any]:
    return {"model": {"name": model}, "environment": ENV, "local": {
        "engine": "vllm", "vllm": {"python": str(install.python), "model": str(path), "args": args}}}


# --- the stack: a gateway, the LocalDeployer, a chat and an embeddings release ----------------------------


class ThreadedGateway:
    """A real gateway app (tests/fleet.running_gateway) on an event loop in a thread of its own: the
    LocalDeployer, the openai SDK and opsctl are synchronous clients of it, as of a gateway process; in-process,
    the test can also look at what the prober saw and flush the usage sink into the lake."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.gw: Gateway | None = None
        self.error: BaseException | None = None

    def _run(self) -> None:
        async def serve() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            async with running_gateway(self.settings) as gw:
                self.gw = gw
                self._ready.set()
                await self._stop.wait()

        try:
            asyncio.run(serve())
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self.error = e
        finally:
            self._ready.set()

    def start(self) -> ThreadedGateway:
        self._thread.start()
        assert self._ready.wait(30) and self.gw is not None, f"the gateway did not start: {self.error!r}"
        return self

    @property
    def url(self) -> str:
        assert self.gw is not None
        return self.gw.url

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def endpoint_states(self, model: str) -> dict[str, Any]:
        """The balancer's state of each endpoint of `model` (url → EndpointState), as the prober left it."""
        assert self.gw is not None
        route = self.gw.app[appkeys.REGISTRY].get(model, ENV)
        return {s.endpoint.url: s for s in route.states} if route is not None else {}

    def lake_rows(self, request_ids: set[str]) -> dict[str, dict[str, Any]]:
        """The usage rows of these requests, after the sink's buffer went to Parquet."""
        assert self.gw is not None
        self.call(self.gw.app[appkeys.DATAPLANE].sink.flush())
        with LakeQuery(lake_config(self.settings)) as lake:
            rows = lake.sql("select request_id, model, environment, release, endpoint, status, stream, "
                            "prompt_tokens, completion_tokens, cost_micros from usage").to_pylist()
        return {r["request_id"]: r for r in rows if r["request_id"] in request_ids}

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@dataclass
class Stack:
    install: VllmInstall
    gateway: ThreadedGateway
    deployer: LocalDeployer
    admin: AdminClient
    key: str
    chat_release: str
    embed_release: str
    timings: dict[str, float] = field(default_factory=dict)

    def openai(self) -> OpenAI:
        # No SDK retries: a failed request must show as failed.
        return OpenAI(base_url=self.gateway.url + "/v1", api_key=self.key, max_retries=0, timeout=120)

    def model(self, name: str) -> dict[str, Any]:
        return self.admin.get(f"/admin/v1/models/{ENV}/{name}")

    def url(self, release: str) -> str:
        [url] = self.deployer.endpoints(release)
        return url


def _deploy(deployer: LocalDeployer, release: str, values: dict[str, Any], version: str) -> float:
    started = time.monotonic()
    deployer.apply(release, None, values, timeout_s=int(START_TIMEOUT_S), version=version)
    return time.monotonic() - started


def _deploy_both(stack: Stack, state_dir: Path) -> None:
    """Chat and embeddings start side by side (model loading is mostly one core each); the embeddings
    release goes through a second deployer object, as a second opsctl would."""
    install = stack.install
    second = make_deployer("local", DeployerOptions(state_dir=state_dir, gateway_url=stack.gateway.url,
                                                    admin_token=ADMIN_TOKEN))
    box: dict[str, Any] = {}

    def embeddings() -> None:
        try:
            box["s"] = _deploy(second, stack.embed_release,
                               _local_values(EMBED, install, install.embedding_model, EMBED_ARGS), "minilm-l6-v2")
        except BaseException as e:  # noqa: BLE001 - raised below, in the test's thread
            box["error"] = e

    thread = threading.Thread(target=embeddings, name="deploy-embeddings")
    thread.start()
    try:
        stack.timings["chat_start_s"] = _deploy(stack.deployer, stack.chat_release,
                                                _local_values(CHAT, install, install.chat_model, CHAT_ARGS), "v1")
    finally:
        thread.join()
        second.close()
    if "error" in box:
        raise box["error"]
    stack.timings["embeddings_start_s"] = box["s"]


def _register(stack: Stack) -> None:
    """The models with prices, each routed to its release's endpoint (labelled with the release name)."""
    for name, release, metadata in ((CHAT, stack.chat_release, {"kind": "chat"}),
                                    (EMBED, stack.embed_release, {"kind": "embeddings"})):
        stack.admin.post("/admin/v1/models", {"name": name, "environment": ENV, "endpoint": stack.url(release),
                                              "release": release, "input_price": IN_PRICE,
                                              "output_price": OUT_PRICE, "max_tokens": 64, "metadata": metadata})
        sync_endpoints(stack.admin, name, ENV, release, stack.deployer.endpoints(release))


def _leftover_groups(pgids: set[int]) -> list[str]:
    """`ps` lines of live (non-zombie) processes in any of these process groups: a vLLM pod is a session
    leader, so its pid is the group id of its engine core and workers too."""
    out = subprocess.run(["ps", "-eo", "pgid=,stat=,args="], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines()
            if line.split(None, 2)[0].isdigit() and int(line.split(None, 2)[0]) in pgids
            and not line.split(None, 2)[1].startswith("Z")]


def _all_processes(deployer: LocalDeployer) -> list[ProcessRecord]:
    return [p for release in deployer.pid_files.releases() for p in deployer.pid_files.read(release)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    install = require_vllm()
    root = tmp_path_factory.mktemp("vllm-release")
    settings = gateway_settings(root / "gateway", usage_sink="spool", **SLOW_POD)
    gateway = ThreadedGateway(settings).start()
    state_dir = root / "opsctl"
    deployer = make_deployer("local", DeployerOptions(state_dir=state_dir, gateway_url=gateway.url,
                                                      admin_token=ADMIN_TOKEN))
    assert isinstance(deployer, LocalDeployer)
    admin = AdminClient(gateway.url, ADMIN_TOKEN)
    stack = Stack(install=install, gateway=gateway, deployer=deployer, admin=admin, key="",
                  chat_release=release_name(CHAT, ENV), embed_release=release_name(EMBED, ENV))
    seen: dict[int, ProcessRecord] = {}
    try:
        _deploy_both(stack, state_dir)
        seen.update((p.pid, p) for p in _all_processes(deployer))
        _register(stack)
        admin.post("/admin/v1/organizations", {"name": "acme"})
        stack.key = admin.post("/admin/v1/api-keys", {"org": "acme"})["key"]
        yield stack
    finally:
        seen.update((p.pid, p) for p in _all_processes(deployer))
        failures = []
        for release in deployer.pid_files.releases():
            try:
                deployer.uninstall(release)
            except ReleaseNotFound:
                pass
            except Exception as e:  # noqa: BLE001 - uninstall the others, then fail
                failures.append(f"{release}: {e}")
        print(f"\nvLLM timings: {json.dumps(stack.timings)}")
        admin.close()
        deployer.close()
        gateway.stop()
        leftovers = _leftover_groups(set(seen))
        assert not failures and not leftovers, f"uninstall failed: {failures}; vLLM processes left: {leftovers}"


# --- vLLM's own figures -------------------------------------------------------------------------------------


def _vllm_counters(url: str) -> dict[str, float]:
    """vLLM's token counters from its /metrics: prompt and generation tokens of finished requests."""
    text = httpx.get(url + "/metrics", timeout=10).text
    wanted = {"vllm:prompt_tokens": "prompt", "vllm:generation_tokens": "completion"}
    found = {"prompt": 0.0, "completion": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name in wanted:
            found[wanted[family.name]] += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return found


def _vllm_gauges(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    names = ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc")
    return {f.name: sum(s.value for s in f.samples) for f in text_string_to_metric_families(text) if f.name in names}


def _tokenize(url: str, body: dict[str, Any]) -> int:
    """vLLM's own count of a prompt (chat template included for messages)."""
    r = httpx.post(url + "/tokenize", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["count"]


def _rid() -> str:
    return uuid.uuid4().hex


# --- 1-3: one deployment, the SDK through the gateway ------------------------------------------------------


def test_chat_and_stream_are_billed_at_vllms_own_token_counts(stack):
    url = stack.url(stack.chat_release)
    before = _vllm_counters(url)
    reported: dict[str, tuple[int, int, bool]] = {}  # request id -> the usage vLLM reported, and stream
    with stack.openai() as client:
        rid = _rid()
        raw = client.chat.completions.with_raw_response.create(
            model=CHAT, messages=MESSAGES, max_tokens=8, extra_headers={"X-Request-ID": rid})
        assert raw.headers["x-request-id"] == rid
        reply = raw.parse()
        assert reply.choices[0].message.content and reply.model == CHAT
        reported[rid] = (reply.usage.prompt_tokens, reply.usage.completion_tokens, False)

        rid = _rid()
        stream = client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=8, stream=True,
                                                stream_options={"include_usage": True},
                                                extra_headers={"X-Request-ID": rid})
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
        assert chunks[-1].choices == [] and usage is not None
        reported[rid] = (usage.prompt_tokens, usage.completion_tokens, True)

    prompt = _tokenize(url, {"model": CHAT, "messages": MESSAGES, "add_generation_prompt": True})
    for rid, (prompt_tokens, completion_tokens, _) in reported.items():
        assert prompt_tokens == prompt, f"{rid}: vLLM's /tokenize counts {prompt}"
        assert 1 <= completion_tokens <= 8
    # vLLM's own counters moved by exactly what the two answers reported (the prober sends no inference).
    after = wait_for(lambda: (c := _vllm_counters(url))["completion"] > before["completion"] and c,
                     timeout=10, what="vLLM's token counters")
    assert after["prompt"] - before["prompt"] == sum(p for p, _, _ in reported.values())
    assert after["completion"] - before["completion"] == sum(c for _, c, _ in reported.values())

    rows = stack.gateway.lake_rows(set(reported))
    assert set(rows) == set(reported)
    for rid, (prompt_tokens, completion_tokens, streamed) in reported.items():
        row = rows[rid]
        assert (row["status"], row["model"], row["environment"], row["release"], row["stream"]) == (
            200, CHAT, ENV, stack.chat_release, streamed)
        assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt_tokens, completion_tokens)
        assert row["cost_micros"] == prompt_tokens * IN_PRICE + completion_tokens * OUT_PRICE


def test_embeddings_through_the_gateway(stack):
    url = stack.url(stack.embed_release)
    text = "Fleetgate routes embeddings to a real vLLM too."
    rid = _rid()
    with stack.openai() as client:
        reply = client.embeddings.create(model=EMBED, input=[text, "and a second input"],
                                         extra_headers={"X-Request-ID": rid})
    assert [len(d.embedding) for d in reply.data] == [EMBED_DIMS, EMBED_DIMS]
    norm = sum(x * x for x in reply.data[0].embedding) ** 0.5
    assert abs(norm - 1.0) < 1e-3  # all-MiniLM-L6-v2 normalizes its embeddings
    own = _tokenize(url, {"model": EMBED, "prompt": text}) + _tokenize(url, {"model": EMBED,
                                                                           "prompt": "and a second input"})
    assert reply.usage.prompt_tokens == own, f"vLLM's /tokenize counts {own}"

    row = stack.gateway.lake_rows({rid})[rid]
    assert (row["status"], row["model"], row["release"]) == (200, EMBED, stack.embed_release)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (own, 0)
    assert row["cost_micros"] == own * IN_PRICE


def test_the_prober_reads_health_and_load_from_the_real_servers(stack):
    for model, release in ((CHAT, stack.chat_release), (EMBED, stack.embed_release)):
        url = stack.url(release)
        [endpoint] = stack.model(model)["endpoints"]
        assert (endpoint["url"], endpoint["status"], endpoint["last_health"]) == (url, "ready", "healthy")
        assert endpoint["last_checked_at"] is not None
        [seen] = stack.admin.get("/admin/v1/analysis", model=model, env=ENV)["endpoints"]
        assert (seen["release"], seen["healthy"], seen["ejected"]) == (release, True, False)
        state = stack.gateway.endpoint_states(model)[url]
        assert state.served_model == model  # read from vLLM's /v1/models
        idle = _vllm_gauges(url)
        assert idle["vllm:num_requests_waiting"] == 0 and state.waiting == 0.0
        assert state.kv_usage is not None and 0.0 <= state.kv_usage <= 1.0

    # Under load the prober's figures follow the server's: a long answer shows as running, cache in use.
    url = stack.url(stack.chat_release)
    state = stack.gateway.endpoint_states(CHAT)[url]
    seen: dict[str, float] = {"running": 0.0, "kv": 0.0}
    with stack.openai() as client:
        stream = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Tell a story."}],
                                                max_tokens=200, stream=True)
        for chunk in stream:
            seen["running"] = max(seen["running"], state.running or 0.0)
            seen["kv"] = max(seen["kv"], state.kv_usage or 0.0)
            if seen["running"] >= 1 and seen["kv"] > 0:
                stream.close()
                break
    assert seen["running"] >= 1 and seen["kv"] > 0, f"the prober never saw the request in flight: {seen}"


# --- 4: a canary from one real release to another ----------------------------------------------------------


class ClientLoad:
    """Small chat requests through the gateway (non-streaming and streaming in turn), back to back until
    stopped: a rollout must not fail one of them. One client keeps a request in flight at every moment; more
    would only starve the new release's start on two cores."""

    def __init__(self, stack: Stack, workers: int = 1) -> None:
        self.stack = stack
        self.ok: dict[str, bool] = {}  # request id -> streamed
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._worker, args=(i,), name=f"load-{i}") for i in range(workers)]

    def _worker(self, index: int) -> None:
        with self.stack.openai() as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                rid, streamed = _rid(), (n + index) % 2 == 0
                try:
                    if streamed:
                        chunks = list(client.chat.completions.create(
                            model=CHAT, messages=MESSAGES, max_tokens=6, stream=True,
                            extra_headers={"X-Request-ID": rid}))
                        assert any(c.choices and c.choices[0].delta.content for c in chunks), "empty stream"
                    else:
                        reply = client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=6,
                                                               extra_headers={"X-Request-ID": rid})
                        assert reply.choices[0].message.content, "empty answer"
                except Exception as e:  # noqa: BLE001 - every failure is what the test reports
                    self.errors.append(f"{time.strftime('%H:%M:%S')} {rid} {type(e).__name__}: {e}")
                    time.sleep(0.2)
                else:
                    self.ok[rid] = streamed

    def __enter__(self) -> ClientLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(150)


class PodWatch:
    """Every pod process of the state dir seen while a rollout runs (from the pid files, twice a second), so
    the test can tell that the ones it no longer needs are gone, the canary's included."""

    def __init__(self, deployer: LocalDeployer) -> None:
        self.deployer = deployer
        self.seen: dict[int, ProcessRecord] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.seen.update((p.pid, p) for p in _all_processes(self.deployer))

    def __enter__(self) -> PodWatch:
        self.seen.update((p.pid, p) for p in _all_processes(self.deployer))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _opsctl_env(stack: Stack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    env.update(FLEETGATE_GATEWAY_URL=stack.gateway.url, FLEETGATE_ADMIN_TOKEN=ADMIN_TOKEN,
               FLEETGATE_STATE_DIR=str(stack.deployer.state_dir))
    return env


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _step_times(events: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds each step took, from the rollout's own events (deploy and finalize start real vLLMs)."""
    started: dict[str, float] = {}
    took: dict[str, float] = {}
    for e in events:
        if e["event"] != "step":
            continue
        key, at = f"{e['name']}_s", e["data"]["elapsed_s"]
        if e["phase"] == "started":
            started[key] = at
        elif e["phase"] in ("passed", "failed") and key in started:
            took[key] = round(took.get(key, 0.0) + at - started.pop(key), 1)
    return took


@pytest.mark.timeout(START_TIMEOUT_S + CANARY_TIMEOUT_S)
def test_a_canary_between_real_releases_fails_no_client_request(stack, tmp_path):
    # Three chat servers run during finalize (old stable, canary, new stable): the embeddings go first, so no
    # more than three vLLMs (~3.7 GB each) ever run at once.
    stack.deployer.uninstall(stack.embed_release)
    old = stack.deployer.pid_files.read(stack.chat_release)
    assert old and all(is_ours(p.pid, p.port) for p in old)
    install = stack.install
    canary = release_name(CHAT, ENV, "canary")
    argv = [sys.executable, "-m", "opsctl", "rollout", "start", CHAT, "--env", ENV, "--version", "v2",
            "--output", "json",
            "--set", "values.replicaCount=1", "--set", "values.local.engine=vllm",
            "--set", f"values.local.vllm.python={install.python}",
            "--set", f"values.local.vllm.model={install.chat_model}",
            "--set", f"values.local.vllm.args={json.dumps(CANARY_ARGS)}",
            "--set", f"readiness_timeout_s={int(START_TIMEOUT_S)}",
            "--set", "analysis.interval_s=2", "--set", "analysis.min_requests=3", "--set", "analysis.timeout_s=120",
            # Two CPU servers sharing a busy 2-core machine: latency compares noise; the error-rate gates
            # stay strict.
            "--set", "analysis.max_p95_latency_ratio=4", "--set", "analysis.max_p95_ttft_ratio=4",
            "--set", "analysis.latency_slack_ms=2000"]
    started = time.monotonic()
    with ClientLoad(stack) as load, PodWatch(stack.deployer) as pods:
        done = subprocess.run(argv, env=_opsctl_env(stack), cwd=tmp_path, capture_output=True, text=True,
                              timeout=CANARY_TIMEOUT_S)
        time.sleep(1.0)  # a few requests on the new stable release alone
    stack.timings["canary_s"] = time.monotonic() - started
    (tmp_path / "rollout.jsonl").write_text(done.stdout)
    events = _json_lines(done.stdout)
    steps = [f"{e.get('name')} {e.get('phase')}: {e.get('message')}" for e in events if e["event"] == "step"]
    assert done.returncode == 0, (f"exit {done.returncode}: {done.stderr[-2000:]}\n" + "\n".join(steps)
                                  + f"\nresult: {events[-1] if events else None}")
    assert events[-1]["event"] == "result" and events[-1]["status"] == "succeeded", events[-1]
    stack.timings["canary_engine_s"] = events[-1]["elapsed_s"]
    assert load.errors == [], f"{len(load.errors)} client errors of {len(load.ok) + len(load.errors)}: " \
                              f"{load.errors[:5]}"
    assert len(load.ok) >= 20, f"only {len(load.ok)} requests during the canary"
    stack.timings["canary_requests"] = len(load.ok)
    [shadow] = [e for e in events if e["event"] == "step" and e["name"] == "shadow" and e["phase"] == "passed"]
    assert shadow["data"]["traffic"] == "shadow" and shadow["data"]["new"]["requests"] >= 3, shadow
    weights = [e["data"]["weights"] for e in events if e["event"] == "step" and e["name"] == "weight"
               and e["phase"] == "passed"]
    assert weights == [{canary: w, stack.chat_release: 100.0 - w} for w in (10.0, 50.0, 100.0)], weights
    stack.timings.update(_step_times(events))

    # The old release's processes are gone, the canary release too; stable's new revision serves v2.
    [url] = stack.deployer.endpoints(stack.chat_release)
    [current] = stack.deployer.pid_files.read(stack.chat_release)
    assert current.url == url and current.revision == 2 and is_ours(current.pid, current.port)
    gone = [p for p in pods.seen.values() if p.pid != current.pid]
    assert {p.pid for p in old} <= {p.pid for p in gone} and len(gone) >= 2, gone  # old stable + canary
    assert not any(is_ours(p.pid, p.port) for p in gone) and not _leftover_groups({p.pid for p in gone})
    with pytest.raises(ReleaseNotFound):
        stack.deployer.history(canary)
    history = stack.deployer.history(stack.chat_release)
    assert [(r.status, r.app_version) for r in history] == [("superseded", "v1"), ("deployed", "v2")]
    assert [(e["url"], e["release"], e["status"]) for e in stack.model(CHAT)["endpoints"]] == [
        (url, stack.chat_release, "ready")]
    served = httpx.get(url + "/v1/models", timeout=10).json()["data"][0]
    assert (served["id"], served["max_model_len"]) == (CHAT, 1024)  # the canary's values, now stable

    # Every client request is one 200 row in the lake; the canary served live traffic on its way.
    rows = stack.gateway.lake_rows(set(load.ok))
    assert set(rows) == set(load.ok) and {r["status"] for r in rows.values()} == {200}
    releases = {r["release"] for r in rows.values()}
    assert {stack.chat_release, canary} <= releases, releases
    with stack.openai() as client:
        assert client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=4).choices[0].message.content
