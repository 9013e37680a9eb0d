"""A key-guessing flood does not reach the store: unknown keys are remembered, lookups are shared and capped.

The store lookups are counted by the Authenticator itself; a key created right after a miss
still works at once, in every process, because its creation is announced on the change bus.
"""

from __future__ import annotations

import asyncio
import secrets

import aiohttp
import pytest

from gateway import appkeys
from gateway.admin.orgs import announce_key
from gateway.auth.authenticator import Authenticator
from gateway.auth.secrets import generate_api_key, hash_api_key
from gateway.errors import AuthenticationFailed
from gateway.redis.bus import RESYNC
from gateway.store import open_store
from tests.fleet import gateway_settings, running_gateway
from tests.support import eventually

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


async def _flood(url: str, keys: list[str], *, concurrency: int = 64, **request) -> list[int]:
    """Send one request per key, `concurrency` at a time; return the statuses."""
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def one(key: str) -> int:
            async with gate, session.request(url=url, headers={"Authorization": f"Bearer {key}"}, **request) as r:
                body = await r.json()
                if r.status >= 400:
                    assert set(body["error"]) == {"message", "type", "code", "param"}
                return r.status

        return await asyncio.gather(*(one(k) for k in keys))


@pytest.fixture(params=["sqlite", "postgresql"])
async def gw(request, tmp_path):
    overrides = {}
    if request.param == "postgresql":
        overrides["database_url"] = request.getfixturevalue("postgres_url")
    async with running_gateway(gateway_settings(tmp_path, auth_negative_ttl_s=60.0, **overrides)) as gw:
        await gw.create_org("acme")
        yield gw


async def test_one_bad_key_a_thousand_times_is_one_store_lookup(gw):
    auth = gw.app[appkeys.AUTH]
    before = auth.store_lookups
    statuses = await _flood(gw.url + "/v1/chat/completions", ["sk-fg-guess"] * 1000, method="POST", json=CHAT)
    assert statuses == [401] * 1000
    assert auth.store_lookups - before == 1
    assert auth.negative_hits > 0


async def test_distinct_random_keys_never_exceed_the_lookup_cap(gw):
    auth = gw.app[appkeys.AUTH]
    good = {"Authorization": f"Bearer {(await gw.create_key())['key']}"}
    guesses = [f"sk-fg-{secrets.token_urlsafe(32)}" for _ in range(1000)]
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/v1/models", headers=good) as r:
            assert r.status == 200
        flood = asyncio.create_task(_flood(gw.url + "/v1/models", guesses, concurrency=128, method="GET"))
        # A key in use is answered from memory while the flood queues for the store.
        for _ in range(5):
            async with s.get(gw.url + "/v1/models", headers=good) as r:
                assert r.status == 200
        assert await flood == [401] * 1000
    assert auth.store_lookups >= 1000
    assert 1 <= auth.peak_store_lookups <= 4
    assert auth.store_lookups_in_flight == 0
    assert auth.unknown_cached >= 1000


async def test_a_key_created_right_after_a_miss_works_in_every_process(tmp_path, redis_url):
    # Two gateways on one database and one Redis, as two replicas would be.
    settings = gateway_settings(tmp_path, redis_url=redis_url, auth_negative_ttl_s=60.0)
    async with running_gateway(settings) as a, running_gateway(settings) as b:
        org = await a.create_org("acme")
        heard: list[dict] = []

        async def record(kind: str, payload: dict) -> None:
            if kind == "key":
                heard.append(payload)

        b.app[appkeys.BUS].subscribe(record)

        # The admin API announces each new key (by hash) to every replica.
        created = await a.create_key()

        async def b_heard_it() -> bool:
            return any(hash_api_key(created["key"]) in p["key_hashes"] for p in heard)

        await eventually(b_heard_it, what="replica B hears of the new key")

        # A secret misses on B (now remembered as unknown), then its key is created and announced.
        secret, key_hash, prefix = generate_api_key()
        headers = {"Authorization": f"Bearer {secret}"}
        async with aiohttp.ClientSession() as s:
            for _ in range(3):
                async with s.get(b.url + "/v1/models", headers=headers) as r:
                    assert r.status == 401
            lookups = b.app[appkeys.AUTH].store_lookups
            key = await a.app[appkeys.STORE].create_api_key(org["id"], name="late", key_hash=key_hash, prefix=prefix)
            await announce_key(a.app[appkeys.BUS], key)

            async def served_by_b() -> bool:
                async with s.get(b.url + "/v1/models", headers=headers) as r:
                    return r.status == 200

            await eventually(served_by_b, timeout=5, what="replica B accepts the new key before the negative TTL")
            assert b.app[appkeys.AUTH].store_lookups == lookups + 1
            async with s.get(a.url + "/v1/models", headers=headers) as r:
                assert r.status == 200


@pytest.fixture
async def store(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'auth.db'}")
    await store.open()
    yield store
    await store.close()


async def test_unknown_keys_expire_and_the_memory_is_bounded(store):
    now = [1000.0]
    auth = Authenticator(store, negative_ttl_s=5.0, negative_max=100, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate("Bearer sk-fg-nope")
    assert auth.store_lookups == 1 and auth.negative_hits == 2
    now[0] += 5.1
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate("Bearer sk-fg-nope")
    assert auth.store_lookups == 2

    for i in range(300):
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(f"Bearer sk-fg-guess-{i}")
    assert auth.unknown_cached == 100
    # The newest are kept: the last guess is still answered without the store.
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate("Bearer sk-fg-guess-299")
    assert auth.store_lookups == 302

    await auth.forget(key_hashes=[hash_api_key("sk-fg-guess-299")])
    assert auth.unknown_cached == 99
    await auth.on_change(RESYNC, {})
    assert auth.unknown_cached == 0


async def test_a_caller_that_leaves_does_not_cancel_the_shared_lookup(store):
    auth = Authenticator(store, negative_ttl_s=60.0)
    first = asyncio.create_task(auth.authenticate("Bearer sk-fg-shared"))
    second = asyncio.create_task(auth.authenticate("Bearer sk-fg-shared"))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(AuthenticationFailed):
        await second
    assert first.cancelled()
    assert auth.store_lookups == 1 and auth.unknown_cached == 1
