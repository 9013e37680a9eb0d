"""The official OpenAI SDK against the gateway, with simulated vLLM pods behind it."""

from __future__ import annotations

import time

import openai
import pytest
from openai import AsyncOpenAI

from opsctl.sim import count_prompt_tokens
from tests.fleet import gateway_settings, running_gateway, sim_pod


@pytest.fixture
async def fleet(tmp_path):
    async with sim_pod("chat-m") as chat_url, sim_pod("embed-m") as embed_url:
        async with running_gateway(gateway_settings(tmp_path)) as gw:
            await gw.create_org("acme")
            await gw.register("chat-m", chat_url, input_price=1.0, output_price=2.0, max_tokens=64)
            await gw.register("embed-m", embed_url)
            key = (await gw.create_key("acme"))["key"]
            client = AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
            yield gw, client, key
            await client.close()


async def test_lists_the_models_the_key_may_use(fleet):
    gw, client, _ = fleet
    models = await client.models.list()
    assert sorted(m.id for m in models.data) == ["chat-m", "embed-m"]
    limited = (await gw.create_key("acme", models=["embed-m"]))["key"]
    async with AsyncOpenAI(base_url=gw.url + "/v1", api_key=limited, max_retries=0) as other:
        assert [m.id for m in (await other.models.list()).data] == ["embed-m"]
        with pytest.raises(openai.PermissionDeniedError):
            await other.chat.completions.create(model="chat-m", messages=[{"role": "user", "content": "x"}])


async def test_chat_completion_returns_usage(fleet):
    _, client, _ = fleet
    messages = [{"role": "user", "content": "Hello there, gateway"}]
    reply = await client.chat.completions.create(model="chat-m", messages=messages, max_tokens=8)
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens == 8
    assert reply.usage.prompt_tokens == count_prompt_tokens({"messages": messages})


async def test_chat_stream_arrives_incrementally_with_usage_when_asked(tmp_path):
    async with sim_pod("slow-m", ttft_ms=50, tokens_per_s=20) as url:
        async with running_gateway(gateway_settings(tmp_path)) as gw:
            await gw.create_org()
            await gw.register("slow-m", url)
            key = (await gw.create_key())["key"]
            async with AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0) as client:
                stream = await client.chat.completions.create(
                    model="slow-m", messages=[{"role": "user", "content": "count"}], max_tokens=10, stream=True,
                    stream_options={"include_usage": True})
                arrivals, text, usage = [], "", None
                async for chunk in stream:
                    arrivals.append(time.perf_counter())
                    if chunk.choices and chunk.choices[0].delta.content:
                        text += chunk.choices[0].delta.content
                    if chunk.usage is not None:
                        usage = chunk.usage
                assert usage is not None and usage.completion_tokens == 10
                assert text
                # 10 tokens at 20 tok/s: chunks are spread over ~450 ms, not delivered in one burst.
                assert arrivals[-1] - arrivals[0] > 0.25

                stream = await client.chat.completions.create(
                    model="slow-m", messages=[{"role": "user", "content": "count"}], max_tokens=5, stream=True)
                chunks = [c async for c in stream]
                assert all(c.usage is None for c in chunks), "usage chunk must be stripped when not asked for"
                assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 5


async def test_completions_and_embeddings(fleet):
    _, client, _ = fleet
    done = await client.completions.create(model="chat-m", prompt="Once upon a time", max_tokens=4)
    assert done.choices[0].text and done.usage.completion_tokens == 4
    emb = await client.embeddings.create(model="embed-m", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0


async def test_bad_and_revoked_keys_are_refused(fleet):
    gw, _, key = fleet
    async with AsyncOpenAI(base_url=gw.url + "/v1", api_key="sk-fg-not-a-key", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.models.list()
    created = await gw.create_key("acme", name="short-lived")
    async with AsyncOpenAI(base_url=gw.url + "/v1", api_key=created["key"], max_retries=0) as c:
        await c.models.list()
        r = await gw.admin.post(f"/admin/v1/api-keys/{created['id']}/revoke")
        assert r.status_code == 200
        with pytest.raises(openai.AuthenticationError):
            await c.models.list()


async def test_unknown_model_and_malformed_bodies(fleet):
    gw, client, key = fleet
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="chat-m", messages="not a list")
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="chat-m", messages=[{"role": "user", "content": "x"}],
                                             max_tokens=-3)
    import httpx

    async with httpx.AsyncClient(base_url=gw.url) as raw:
        r = await raw.post("/v1/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 400
        body = r.json()["error"]
        assert body["type"] == "invalid_request_error" and "JSON" in body["message"]
        assert r.headers["x-request-id"]
        big = b'{"model": "chat-m", "messages": [{"role": "user", "content": "' + b"x" * (5 * 1024 * 1024) + b'"}]}'
        r = await raw.post("/v1/chat/completions", content=big, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert "4194304 bytes" in r.json()["error"]["message"]  # the limit is stated
        r = await raw.post("/v1/chat/completions", json={"model": "chat-m"})
        assert r.status_code == 401 and key not in r.text


async def test_upstream_never_sees_the_client_key(tmp_path):
    """The client's Authorization header is not forwarded upstream."""
    from aiohttp import web

    seen = []

    async def capture(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"id": "x", "object": "chat.completion", "created": 0, "model": "cap",
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", capture)
    from tests.fleet import serve_app

    async with serve_app(app) as url, running_gateway(gateway_settings(tmp_path)) as gw:
        await gw.create_org()
        await gw.register("cap", url)
        key = (await gw.create_key())["key"]
        async with AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0) as client:
            await client.chat.completions.create(model="cap", messages=[{"role": "user", "content": "x"}])
    assert seen and all("authorization" not in {k.lower() for k in h} for h in seen)
    assert not any(key in str(h) for h in seen)


async def test_budget_soft_limit_is_flagged_and_exhaustion_is_insufficient_quota(tmp_path):
    async with sim_pod("m") as pod, running_gateway(gateway_settings(tmp_path)) as gw:
        await gw.create_org()
        await gw.register("m", pod, input_price=0, output_price=1000, max_tokens=10)  # 10k micros a call
        r = await gw.admin.put("/admin/v1/budgets", json={"org": "acme", "usd": 0.05, "period": "daily",
                                                          "soft_limit_pct": 50})
        assert r.status_code == 200
        key = (await gw.create_key())["key"]
        async with AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0) as client:
            msgs = [{"role": "user", "content": "x"}]
            for _ in range(5):
                await client.chat.completions.create(model="m", messages=msgs, extra_body={"ignore_eos": True})
            with pytest.raises(openai.RateLimitError) as e:
                await client.chat.completions.create(model="m", messages=msgs)
            assert e.value.code == "insufficient_quota"
        audit = (await gw.admin.get("/admin/v1/audit")).json()
        assert [a["action"] for a in audit].count("budget.soft_limit") == 1
        metrics = (await gw.admin.get("/metrics")).text
        assert 'fleetgate_budget_soft_limit_total{org=' in metrics


async def test_inference_alias_behaves_like_chat_completions(fleet):
    import httpx

    gw, _, key = fleet
    async with httpx.AsyncClient(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}) as c:
        r = await c.post("/v1/inference", json={"model": "chat-m", "messages": [{"role": "user", "content": "hi"}],
                                                "max_tokens": 3})
        assert r.status_code == 200 and r.json()["object"] == "chat.completion"
        assert r.json()["usage"]["completion_tokens"] == 3
        r = await c.post("/v1/inference", json={"model": "chat-m"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
