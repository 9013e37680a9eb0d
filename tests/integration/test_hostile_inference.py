"""The budget invariant and the request path against hostile clients: every request shape that
could generate more than was reserved, and every malformed body, through a real gateway and
simulator pods."""

from __future__ import annotations

import asyncio
import math
import time
import uuid

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import appkeys
from gateway.limits import BudgetRule
from tests.fleet import gateway_settings, running_gateway, sim_pod
from tests.support import eventually

OUT_PRICE = 1.5  # USD per 1M output tokens = micro-USD per token
IN_PRICE = 0.5


async def _setup(gw, url: str, *, usd: float | None = None, **model) -> tuple[str, dict]:
    org = await gw.create_org("acme")
    key = (await gw.create_key("acme"))["key"]
    await gw.register("m", url, input_price=IN_PRICE, output_price=OUT_PRICE, max_tokens=64, **model)
    if usd is not None:
        r = await gw.admin.put("/admin/v1/budgets", json={"org": "acme", "usd": usd, "period": "daily"})
        assert r.status_code == 200, r.text
    return key, org


async def _budget(gw, org: dict) -> tuple[int, int]:
    """(spent, reserved) micro-USD of the org's daily budget, once the settles have landed."""
    limiter = gw.app[appkeys.DATAPLANE].limiter
    budget = (await gw.app[appkeys.STORE].list_budgets(org["id"]))[0]
    rule = BudgetRule.from_budget(budget)

    async def settled():
        status = await limiter.budget_status(rule)
        return status if status.reserved_micros == 0 else None

    status = await eventually(settled, what="every reservation settled")
    return status.spent_micros, status.reserved_micros


async def _post(session, gw, key: str, body: dict, path: str = "/v1/chat/completions") -> tuple[int, dict | str]:
    async with session.post(gw.url + path, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        try:
            return r.status, await r.json(content_type=None)
        except ValueError:
            return r.status, await r.text()


async def test_max_completion_tokens_cannot_bypass_the_budget(tmp_path):
    """vLLM honours max_completion_tokens before max_tokens: the reservation must too."""
    budget_usd = 0.05
    async with sim_pod("m") as url, running_gateway(gateway_settings(tmp_path)) as gw:
        key, org = await _setup(gw, url, usd=budget_usd)
        body = {"model": "m", "messages": [{"role": "user", "content": "go"}],
                "max_tokens": 1, "max_completion_tokens": 4000, "ignore_eos": True}
        async with aiohttp.ClientSession() as s:
            results = await asyncio.gather(*(_post(s, gw, key, body) for _ in range(60)))
        ok = [r for status, r in results if status == 200]
        assert ok, "at least one request fits the budget"
        assert all(r["usage"]["completion_tokens"] == 4000 for r in ok)  # the pod did generate that much
        assert all(status in (200, 429) for status, _ in results)
        spent, _ = await _budget(gw, org)
        assert spent <= budget_usd * 1_000_000
        assert spent == sum(math.ceil(r["usage"]["prompt_tokens"] * IN_PRICE + 4000 * OUT_PRICE) for r in ok)


@pytest.mark.parametrize(("path", "body", "tokens"), [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "go"}], "max_tokens": 300, "n": 4}, 1200),
    ("/v1/completions", {"prompt": ["a", "b", "c"], "max_tokens": 200, "n": 2}, 1200),
])
async def test_n_and_several_prompts_are_reserved_in_full(tmp_path, path, body, tokens):
    """Each request can generate 1,200 tokens ($0.0018): a $0.002 budget fits exactly one."""
    async with sim_pod("m") as url, running_gateway(gateway_settings(tmp_path)) as gw:
        key, org = await _setup(gw, url, usd=0.002)
        body = {"model": "m", "ignore_eos": True, **body}
        async with aiohttp.ClientSession() as s:
            results = await asyncio.gather(*(_post(s, gw, key, body, path) for _ in range(10)))
        served = [r for status, r in results if status == 200]
        assert len(served) == 1, results
        assert served[0]["usage"]["completion_tokens"] == tokens
        assert sorted(status for status, _ in results) == [200] + [429] * 9
        spent, _ = await _budget(gw, org)
        assert spent == math.ceil(served[0]["usage"]["prompt_tokens"] * IN_PRICE + tokens * OUT_PRICE) <= 2_000


async def test_cjk_and_emoji_prompts_stay_within_the_reservation(tmp_path):
    """The simulator counts non-ASCII like a byte-level tokenizer; the bound must cover it."""
    async with sim_pod("m") as url, running_gateway(gateway_settings(tmp_path)) as gw:
        key, org = await _setup(gw, url, usd=1.0)
        text = "東京は日本の首都です。😀🎉" * 40
        async with aiohttp.ClientSession() as s:
            status, body = await _post(s, gw, key, {"model": "m", "messages": [{"role": "user", "content": text}],
                                                    "max_tokens": 8})
        assert status == 200
        assert body["usage"]["prompt_tokens"] > len(text) // 4  # the pod counted bytes, not chars / 4
        dataplane = gw.app[appkeys.DATAPLANE]
        assert dataplane.metrics.bad_usage._metrics == {}  # nothing refused: the bound held
        spent, _ = await _budget(gw, org)
        assert spent == math.ceil(body["usage"]["prompt_tokens"] * IN_PRICE + 8 * OUT_PRICE)


@pytest.mark.parametrize("mode", ["huge", "string", "list", "negative", "float", "missing"])
@pytest.mark.parametrize("stream", [False, True])
async def test_lying_usage_bills_the_reservation_and_counts_against_the_pod(tmp_path, mode, stream):
    async with sim_pod("m", usage_lie=mode) as url, running_gateway(gateway_settings(tmp_path)) as gw:
        key, org = await _setup(gw, url, usd=1.0)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "stream": stream}
        async with aiohttp.ClientSession() as s:
            status, _ = await _post(s, gw, key, body)
        assert status == 200  # the client got its answer
        dataplane = gw.app[appkeys.DATAPLANE]
        state = dataplane.registry.get("m", "production").states[0]
        assert state.consecutive_failures == 1
        spent, reserved = await _budget(gw, org)
        assert reserved == 0
        # Billed exactly the reservation: the prompt bound and the full cap, never the lie.
        req_bound = spent - 10 * OUT_PRICE
        assert 0 < req_bound / IN_PRICE < 200
        assert spent < 1_000_000


async def test_malformed_bodies_are_400s_and_leak_nothing(tmp_path):
    deep = "x"
    for _ in range(300):
        deep = [deep]
    bodies = [
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, "stream_options": "x"},
        {"model": "m", "messages": [{"role": "assistant", "content": "hi", "tool_calls": 5}]},
        {"model": "m", "messages": [{"role": "user", "content": deep}]},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "extra": deep},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**40},
    ]
    settings = gateway_settings(tmp_path, usage_sink="spool")
    async with sim_pod("m") as url, running_gateway(settings) as gw:
        key, org = await _setup(gw, url, usd=1.0)
        async with aiohttp.ClientSession() as s:
            results = [await _post(s, gw, key, b) for b in bodies]
            prompt_deep = "y"
            for _ in range(400):
                prompt_deep = [prompt_deep]
            results.append(await _post(s, gw, key, {"model": "m", "prompt": prompt_deep}, "/v1/completions"))
        for status, body in results:
            assert status == 400, body
            assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
        assert results[0][1]["error"]["param"] == "stream_options"
        assert results[4][1]["error"]["param"] == "temperature"
        spent, reserved = await _budget(gw, org)
        assert (spent, reserved) == (0, 0)
        await gw.app[appkeys.DATAPLANE].sink.flush()
        from analytics_lake.query import LakeQuery
        from gateway.usage import lake_config

        with LakeQuery(lake_config(settings)) as lake:
            rows = lake.sql("select status from usage").to_pylist()
        assert [r["status"] for r in rows] == [400] * len(results)  # every failure wrote its row


async def test_a_hung_pod_is_skipped_and_ejected(tmp_path):
    """/health says fine, completions hang: a late first byte triggers a liveness check, the pod
    fails it, the request is retried elsewhere and the pod is ejected."""
    settings = gateway_settings(tmp_path, eject_after_failures=1, eject_cooldown_s=60)
    async with sim_pod("m", hang_rate=1.0) as hung, sim_pod("m") as good, running_gateway(settings) as gw:
        key, _ = await _setup(gw, hung, metadata={"first_byte_timeout_s": 0.3})
        await gw.register("m", good)
        started = time.monotonic()
        async with aiohttp.ClientSession() as s:
            for _ in range(10):
                status, body = await _post(s, gw, key, {"model": "m", "messages": [{"role": "user", "content": "x"}]})
                assert status == 200, body
        assert time.monotonic() - started < 5  # one wait of ~2 x 0.3 s at most, not ten
        dataplane = gw.app[appkeys.DATAPLANE]
        states = {st.endpoint.url: st for st in dataplane.registry.get("m", "production").states}
        assert states[hung].ejected
        assert not states[good].ejected
        assert dataplane.forwarder.liveness.checks >= 1


async def test_a_busy_pod_is_waited_for(tmp_path):
    """A slow answer from a pod that passes the liveness check is not abandoned."""
    settings = gateway_settings(tmp_path, eject_after_failures=1)
    async with sim_pod("m", ttft_ms=50, tokens_per_s=40) as url, running_gateway(settings) as gw:
        key, _ = await _setup(gw, url, metadata={"first_byte_timeout_s": 0.2})
        async with aiohttp.ClientSession() as s:
            status, body = await _post(s, gw, key, {"model": "m", "max_tokens": 30, "ignore_eos": True,
                                                    "messages": [{"role": "user", "content": "x"}]})
        assert status == 200 and body["usage"]["completion_tokens"] == 30  # ~0.8 s, well past 0.2 s
        state = gw.app[appkeys.DATAPLANE].registry.get("m", "production").states[0]
        assert state.consecutive_failures == 0 and not state.ejected


async def test_a_stream_that_never_starts_is_retried_elsewhere(tmp_path):
    settings = gateway_settings(tmp_path, eject_after_failures=1, eject_cooldown_s=60)
    async with sim_pod("m", hang_after_headers=True) as hung, sim_pod("m") as good, running_gateway(settings) as gw:
        key, _ = await _setup(gw, hung, metadata={"first_byte_timeout_s": 0.3})
        await gw.register("m", good)
        async with aiohttp.ClientSession() as s:
            for _ in range(4):
                async with s.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                  json={"model": "m", "stream": True,
                                        "messages": [{"role": "user", "content": "x"}]}) as r:
                    assert r.status == 200
                    text = await r.text()
                assert text.endswith("data: [DONE]\n\n")


async def test_a_pod_answering_garbage_is_a_502_and_a_failure(tmp_path):
    settings = gateway_settings(tmp_path, max_attempts=1, eject_after_failures=5)
    async with sim_pod("m", garbage_rate=1.0) as url, running_gateway(settings) as gw:
        key, _ = await _setup(gw, url)
        async with aiohttp.ClientSession() as s:
            status, body = await _post(s, gw, key, {"model": "m", "messages": [{"role": "user", "content": "x"}]})
            assert status == 502 and "not a JSON object" in body["error"]["message"]
            async with s.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                              json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
                assert r.status == 502
                assert r.headers["Content-Type"].startswith("application/json")
                assert "[DONE]" not in await r.text()
        state = gw.app[appkeys.DATAPLANE].registry.get("m", "production").states[0]
        assert state.consecutive_failures == 2


async def test_a_pod_answering_garbage_is_skipped_for_a_good_one(tmp_path):
    settings = gateway_settings(tmp_path, eject_after_failures=1, eject_cooldown_s=60)
    async with sim_pod("m", garbage_rate=1.0) as bad, sim_pod("m") as good, running_gateway(settings) as gw:
        key, _ = await _setup(gw, bad)
        await gw.register("m", good)
        async with aiohttp.ClientSession() as s:
            for stream in (False, True, False):
                status, _ = await _post(s, gw, key, {"model": "m", "stream": stream,
                                                     "messages": [{"role": "user", "content": "x"}]})
                assert status == 200


async def test_a_pod_serving_another_name_still_serves(tmp_path):
    """Real vLLM 404s any model name but its --served-model-name: the gateway learns the name."""
    async with sim_pod("m", served_model_name="org/model-v2") as url, \
            running_gateway(gateway_settings(tmp_path)) as gw:
        key, _ = await _setup(gw, url)
        dataplane = gw.app[appkeys.DATAPLANE]
        state = dataplane.registry.get("m", "production").states[0]
        async def learned():
            return state.served_model == "org/model-v2"

        await eventually(learned, what="the probe learned the served name")
        async with aiohttp.ClientSession() as s:
            status, body = await _post(s, gw, key, {"model": "m", "messages": [{"role": "user", "content": "x"}]})
        assert status == 200, body


async def test_client_model_strings_never_become_metric_labels(tmp_path):
    async with sim_pod("m") as url, running_gateway(gateway_settings(tmp_path)) as gw:
        key, _ = await _setup(gw, url)
        names = [f"random-{uuid.uuid4().hex}" for _ in range(200)]
        async with aiohttp.ClientSession() as s:
            for name in names:
                status, _ = await _post(s, gw, key, {"model": name, "messages": [{"role": "user", "content": "x"}]})
                assert status == 404
            status, _ = await _post(s, gw, key, {"model": "m", "messages": [{"role": "user", "content": "x"}]})
            async with s.get(gw.url + "/metrics") as r:
                text = await r.text()
        assert not any(name in text for name in names)
        labels = {sample.labels.get("model") for family in text_string_to_metric_families(text)
                  for sample in family.samples if family.name == "fleetgate_requests"}
        assert labels == {"m", "unknown"}


async def test_models_retrieve_with_the_openai_sdk(tmp_path):
    import openai

    async with sim_pod("org/chat-7b") as url, running_gateway(gateway_settings(tmp_path)) as gw:
        await gw.create_org("acme")
        await gw.register("org/chat-7b", url)
        await gw.register("secret-model", url)
        key = (await gw.create_key("acme", models=["org/chat-7b"]))["key"]
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
        model = await client.models.retrieve("org/chat-7b")
        assert model.id == "org/chat-7b" and model.object == "model"
        for name in ("secret-model", "nope"):
            with pytest.raises(openai.NotFoundError) as e:
                await client.models.retrieve(name)
            assert e.value.body["code"] == "model_not_found"
        bad = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="sk-fg-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await bad.models.retrieve("org/chat-7b")
        await client.close()
        await bad.close()


@pytest.mark.parametrize(("queue_s", "expected"), [(0.2, {200: 2, 503: 6}), (5.0, {200: 8})])
async def test_a_burst_never_opens_more_than_the_cap_to_a_pod(tmp_path, queue_s, expected):
    """Two connections at most to the pod: the rest queue fairly, and those that wait longer than
    the queue timeout get a clear 503 (tried elsewhere first when there is another endpoint)."""
    settings = gateway_settings(tmp_path, upstream_max_connections_per_host=2, upstream_queue_timeout_s=queue_s,
                                max_attempts=1)
    async with sim_pod("m", ttft_ms=400) as url, running_gateway(settings) as gw:
        key, _ = await _setup(gw, url)
        pool = gw.app[appkeys.DATAPLANE].upstream
        peak = 0

        async def watch():
            nonlocal peak
            while True:
                peak = max(peak, pool.host_stats(url).open)
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        async with aiohttp.ClientSession() as s:
            results = await asyncio.gather(*(_post(s, gw, key, {"model": "m", "messages": [
                {"role": "user", "content": "x"}]}) for _ in range(8)))
        watcher.cancel()
        statuses = {status: sum(1 for st, _ in results if st == status) for status, _ in results}
        assert statuses == expected, results
        assert 1 <= peak <= 2
        for status, body in results:
            if status == 503:
                assert body["error"]["code"] == "upstream_saturated"
                assert "upstream_max_connections_per_host" in body["error"]["message"]
