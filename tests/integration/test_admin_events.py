"""`GET /admin/v1/events`: live rollout, registry and health events as Server-Sent Events.

Real gateways serve the stream to a real HTTP client; health events come from the prober
watching a simulator pod that is stopped; the cross-replica case runs two gateways on one
store and a real Redis change bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import orjson
import pytest

from gateway import appkeys
from gateway.admin import events as events_api
from gateway.events import EventHub
from tests.fleet import ADMIN_TOKEN, gateway_settings, running_gateway, sim_pod


@dataclass
class Message:
    """One SSE block: an event (id/event/data) or only comments."""

    id: int | None = None
    event: str | None = None
    data: dict | None = None
    comments: list[str] = field(default_factory=list)


class EventStream:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next_block(self, timeout: float = 5.0) -> Message:
        message = Message()
        async with asyncio.timeout(timeout):
            async for line in self._lines:
                if not line:
                    return message
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "":
                    message.comments.append(value)
                elif name == "id":
                    message.id = int(value)
                elif name == "event":
                    message.event = value
                elif name == "data":
                    message.data = orjson.loads(value)
        raise EOFError("the event stream ended")

    async def next_event(self, timeout: float = 5.0) -> Message:
        """The next block that is an event (keepalive comments skipped)."""
        while True:
            message = await self.next_block(timeout)
            if message.event is not None:
                return message


@contextlib.asynccontextmanager
async def subscribe(gw, query: str = "") -> AsyncIterator[EventStream]:
    async with gw.admin.stream("GET", f"/admin/v1/events{query}") as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = EventStream(response)
        first = await stream.next_block()  # the "subscribed" comment: the subscription exists now
        assert first.comments and first.comments[0].startswith("subscribed to ")
        yield stream


@pytest.fixture
async def gw(tmp_path):
    async with running_gateway(gateway_settings(tmp_path, access_log=False)) as gw:
        yield gw


def rollout_body(**overrides) -> dict:
    body = {"model": "demo-chat", "environment": "production", "version": "v2", "kind": "canary",
            "playbook": "canary.yaml", "spec": {}, "owner": {"host": "h", "pid": 1}}
    body.update(overrides)
    return body


async def test_rollout_and_registry_events_stream_live(gw):
    async with subscribe(gw) as stream:
        rollout = (await gw.admin.post("/admin/v1/rollouts", json=rollout_body())).json()
        started = await stream.next_event()
        assert started.event == "rollout"
        assert started.data == {"name": "status", "rollout_id": rollout["id"], "model": "demo-chat",
                                "environment": "production", "status": "running", "step": 0, "phase": "pending",
                                "reason": None}

        r = await gw.admin.post(f"/admin/v1/rollouts/{rollout['id']}/events",
                                json={"step": 0, "name": "deploy", "phase": "started", "message": "deploying v2"})
        step = await stream.next_event()
        assert step.event == "rollout" and step.id > started.id
        assert {k: step.data[k] for k in r.json()} == r.json()  # the event JSON (+ model, environment)

        await gw.admin.patch(f"/admin/v1/rollouts/{rollout['id']}",
                             json={"expected_version_no": 1, "status": "failed", "reason": "smoke failed"})
        failed = await stream.next_event()
        assert (failed.data["status"], failed.data["reason"]) == ("failed", "smoke failed")

        await gw.register("demo-chat", "http://127.0.0.1:9")
        registry = await stream.next_event()
        assert (registry.event, registry.data) == ("registry", {"model": "demo-chat", "environment": "production"})
        assert registry.id > failed.id > step.id


async def test_types_filter(gw):
    async with subscribe(gw, "?types=registry") as registry_only:
        await gw.admin.post("/admin/v1/rollouts", json=rollout_body())
        await gw.register("demo-chat", "http://127.0.0.1:9")
        message = await registry_only.next_event()
        assert message.event == "registry"  # the rollout event before it was not for this client


@pytest.mark.parametrize("types", ["bogus", "rollout,bogus", ",", "registry,%00", "a" * 300])
async def test_bad_types_filter_is_refused(gw, types):
    r = await gw.admin.get("/admin/v1/events", params={"types": types})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["param"] == "types"


async def test_events_need_the_admin_token(gw):
    async with httpx.AsyncClient(base_url=gw.url) as anon:
        r = await anon.get("/admin/v1/events")
        assert r.status_code == 401 and r.json()["error"]["code"]


async def test_keepalive_comment_on_a_quiet_stream(gw, monkeypatch):
    monkeypatch.setattr(events_api, "KEEPALIVE_S", 0.2)
    async with subscribe(gw) as stream:
        message = await stream.next_block(timeout=3)
        assert message.comments == ["keepalive"] and message.event is None


async def test_client_disconnect_ends_its_subscription(gw):
    hub = gw.app[appkeys.EVENTS]
    internal = hub.subscribers  # the gateway's own (the endpoint health history follows health events)
    async with subscribe(gw), subscribe(gw, "?types=health"):
        assert hub.subscribers == internal + 2
    deadline = time.monotonic() + 5
    while hub.subscribers > internal and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert hub.subscribers == internal


async def test_shutdown_ends_open_streams_promptly(tmp_path):
    """Stopping the gateway ends its SSE streams at once instead of waiting out the shutdown timeout."""
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30) as client:
        gateway = running_gateway(gateway_settings(tmp_path, access_log=False))
        gw = await gateway.__aenter__()
        try:
            ready = asyncio.Event()

            async def listen() -> None:
                async with client.stream("GET", f"{gw.url}/admin/v1/events") as response:
                    stream = EventStream(response)
                    await stream.next_block()
                    ready.set()
                    while True:
                        await stream.next_block(timeout=30)

            listener = asyncio.create_task(listen())
            await asyncio.wait_for(ready.wait(), 5)
        finally:
            stopping = time.monotonic()
            await gateway.__aexit__(None, None, None)
        assert time.monotonic() - stopping < 3  # far below the runner's 10 s wait for running handlers
        with pytest.raises((EOFError, httpx.HTTPError)):
            await asyncio.wait_for(listener, 5)


async def test_health_status_changes_stream(tmp_path):
    settings = gateway_settings(tmp_path, access_log=False, health_interval_s=0.2)
    async with running_gateway(settings) as gw, subscribe(gw, "?types=health") as stream:
        async with sim_pod("demo-chat") as pod_url:
            model = await gw.register("demo-chat", pod_url)
            endpoint_id = model["endpoint"]["id"]
            await asyncio.sleep(0.5)  # probed healthy: a ready endpoint staying ready is no event
        # The pod is gone: after two failed probes the prober marks the endpoint unhealthy.
        message = await stream.next_event(timeout=10)
        assert message.event == "health"
        assert message.data == {"endpoint_id": endpoint_id, "url": pod_url, "model": "demo-chat",
                                "environment": "production", "status": "unhealthy",
                                "detail": message.data["detail"], "latency_ms": message.data["latency_ms"]}
        assert isinstance(message.data["detail"], str) and message.data["detail"]
        assert isinstance(message.data["latency_ms"], float) and message.data["latency_ms"] >= 0
        endpoint = (await gw.admin.get("/admin/v1/models/production/demo-chat")).json()["endpoints"][0]
        assert endpoint["status"] == "unhealthy"  # the event reports what the store now holds


async def test_events_reach_every_replica_through_redis(tmp_path, redis_url):
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    first_settings = gateway_settings(tmp_path / "a", access_log=False, redis_url=redis_url, database_url=database)
    second_settings = gateway_settings(tmp_path / "b", access_log=False, redis_url=redis_url, database_url=database)
    async with running_gateway(first_settings) as first, running_gateway(second_settings) as second:
        async with subscribe(second) as remote, subscribe(first) as local:
            rollout = (await first.admin.post("/admin/v1/rollouts", json=rollout_body())).json()
            for stream in (local, remote):
                message = await stream.next_event()
                assert (message.event, message.data["rollout_id"]) == ("rollout", rollout["id"])
            await first.register("demo-chat", "http://127.0.0.1:9")
            for stream in (local, remote):
                message = await stream.next_event()
                assert message.event == "registry"
            # Exactly once each: the sender's own bus message is not delivered twice.
            await second.admin.post(f"/admin/v1/rollouts/{rollout['id']}/events",
                                    json={"step": 0, "name": "deploy", "phase": "info"})
            for stream in (local, remote):
                message = await stream.next_event()
                assert (message.event, message.data["name"]) == ("rollout", "deploy")
                with pytest.raises(TimeoutError):
                    await stream.next_event(timeout=0.3)


# the hub itself ---------------------------------------------------------------------------


async def test_slow_subscriber_drops_oldest_and_is_told():
    hub = EventHub(max_queue=3)
    with hub.subscribe() as slow, hub.subscribe(["health"]) as other:
        for i in range(5):
            hub.publish("registry", {"n": i})
        lagged = await slow.next_event(timeout=1)
        assert (lagged.type, lagged.data, lagged.id) == ("lagged", {"dropped": 2}, None)
        kept = [await slow.next_event(timeout=1) for _ in range(3)]
        assert [e.data["n"] for e in kept] == [2, 3, 4] and [e.id for e in kept] == [3, 4, 5]
        assert await slow.next_event(timeout=0.05) is None
        assert await other.next_event(timeout=0.05) is None  # not its type
        hub.publish("health", {"n": 5})
        assert (await other.next_event(timeout=1)).id == 6  # ids increase across types
    assert hub.subscribers == 0


async def test_closing_the_hub_ends_iteration():
    hub = EventHub()
    subscription = hub.subscribe(["rollout"])
    hub.publish("rollout", {"n": 1})

    async def drain() -> list[int]:
        return [event.data["n"] async for event in subscription]

    task = asyncio.create_task(drain())
    await asyncio.sleep(0.05)
    hub.close()
    assert await asyncio.wait_for(task, 1) == [1]
    assert hub.subscribe().closed
    with pytest.raises(ValueError, match="unknown event types"):
        hub.subscribe(["bogus"])
