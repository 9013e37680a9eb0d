"""Signed inference requests through a real gateway: valid, stale, replayed, tampered, wrong key, bearer refused.

The client is the ten-line example of docs/signed-requests.md, run as written; the replay case
across replicas uses two gateway apps sharing a real Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time

import aiohttp
import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from gateway import appkeys
from gateway.auth.signing import SIGNATURE_HEADER, LocalNonces, RedisNonces, derive_signing_key, signature_header
from gateway.redis.keyspace import RedisKeys
from gateway.store import open_database, open_store
from gateway.store.migrations import MIGRATIONS, apply_migrations
from opsctl.cli import app as opsctl_app
from tests.fleet import ADMIN_TOKEN, gateway_settings, running_gateway, sim_pod
from tests.support import free_port, repo_root

CHAT_PATH = "/v1/chat/completions"
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()


def doc_client():
    """`signed_post` from the first Python block of docs/signed-requests.md, exactly as documented."""
    doc = repo_root() / "docs" / "signed-requests.md"
    block = re.search(r"```python\n(.*?)```", doc.read_text(), re.S).group(1)
    assert len(block.strip().splitlines()) <= 10
    namespace: dict = {}
    exec(compile(block, str(doc), "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace["signed_post"]


class Signer:
    """A signing key as a client holds it: its id and the secret it was given once."""

    def __init__(self, created: dict) -> None:
        self.id, self.secret = created["id"], created["key"]
        self.signing_key = derive_signing_key(self.secret)

    def header(self, body: bytes = BODY, *, method: str = "POST", target: str = CHAT_PATH, **kw) -> dict:
        return {SIGNATURE_HEADER: signature_header(self.id, self.signing_key, method, target, body, **kw),
                "Content-Type": "application/json"}


async def post(url: str, headers: dict, body: bytes = BODY, path: str = CHAT_PATH) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.post(url + path, data=body, headers=headers) as r:
        return r.status, await r.json(content_type=None)


def refused(status: int, doc: dict, code: str) -> str:
    """Assert an OpenAI-shaped 401 with `code`; return its message."""
    assert status == 401, doc
    assert set(doc["error"]) == {"message", "type", "code", "param"} and doc["error"]["code"] == code, doc
    return doc["error"]["message"]


@pytest.fixture
async def gw(tmp_path):
    async with sim_pod("m") as pod, running_gateway(gateway_settings(tmp_path)) as gw:
        await gw.create_org("acme")
        await gw.register("m", pod)
        yield gw


async def test_the_documented_client_signs_a_request_that_is_served(gw):
    created = await gw.create_key(require_signature=True)
    assert created["require_signature"] is True and "signing_key" not in created
    r = await asyncio.to_thread(doc_client(), gw.url, created["id"], created["key"], CHAT_PATH, BODY)
    assert r.status_code == 200, r.text
    assert r.json()["choices"]
    # An SDK's placeholder bearer is ignored when the request is signed.
    signed = Signer(created).header() | {"Authorization": "Bearer unused"}
    assert (await post(gw.url, signed))[0] == 200
    stream = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    async with aiohttp.ClientSession() as s, s.post(gw.url + CHAT_PATH, data=stream,
                                                   headers=Signer(created).header(stream)) as r:
        assert r.status == 200 and (await r.text()).rstrip().endswith("data: [DONE]")


async def test_signed_get_of_the_model_list(gw):
    signer = Signer(await gw.create_key(require_signature=True))
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/v1/models",
                                                   headers=signer.header(b"", method="GET", target="/v1/models")) as r:
        assert r.status == 200
        assert [m["id"] for m in (await r.json())["data"]] == ["m"]


async def test_bearer_use_of_a_signing_key_is_refused(gw):
    created = await gw.create_key(require_signature=True)
    status, doc = await post(gw.url, {"Authorization": f"Bearer {created['key']}"})
    assert "docs/signed-requests.md" in refused(status, doc, "signature_required")
    assert created["key"] not in json.dumps(doc)
    status, doc = await post(gw.url, {})  # neither a bearer key nor a signature
    refused(status, doc, "invalid_api_key")


async def test_stale_and_future_timestamps_name_the_server_time_and_window(gw):
    signer = Signer(await gw.create_key(require_signature=True))
    for skew in (-301, 301):
        before = int(time.time())
        status, doc = await post(gw.url, signer.header(ts=before + skew))
        message = refused(status, doc, "signature_expired")
        assert "±300 s" in message
        assert before - 2 <= int(re.search(r"gateway's time is (\d+)", message).group(1)) <= int(time.time()) + 2
    status, _ = await post(gw.url, signer.header(ts=int(time.time()) - 290))  # inside the window
    assert status == 200


async def test_a_replayed_request_is_refused(gw):
    signer = Signer(await gw.create_key(require_signature=True))
    headers = signer.header()
    assert (await post(gw.url, headers))[0] == 200
    status, doc = await post(gw.url, headers)
    refused(status, doc, "replayed_request")
    # The same nonce under a new signature (another timestamp) is a replay too.
    nonce = headers[SIGNATURE_HEADER].split("nonce=")[1].split(",")[0]
    status, doc = await post(gw.url, signer.header(ts=int(time.time()) - 1, nonce=nonce))
    refused(status, doc, "replayed_request")


async def test_tampered_body_path_and_wrong_key_do_not_match(gw):
    signer = Signer(await gw.create_key(require_signature=True))
    other = Signer(await gw.create_key(name="other", require_signature=True))
    tampered = BODY.replace(b'"hi"', b'"ho"')
    cases = [
        (signer.header(BODY), tampered, CHAT_PATH),  # body changed after signing
        (signer.header(BODY, target="/v1/completions"), BODY, CHAT_PATH),  # signed for another path
        (signer.header(BODY, target=CHAT_PATH + "?x=1"), BODY, CHAT_PATH),  # query dropped
        (signer.header(BODY, method="PUT"), BODY, CHAT_PATH),  # another method
    ]
    wrong = other.header(BODY)
    wrong[SIGNATURE_HEADER] = wrong[SIGNATURE_HEADER].replace(other.id, signer.id)  # other's key, this key's id
    cases.append((wrong, BODY, CHAT_PATH))
    for headers, body, path in cases:
        status, doc = await post(gw.url, headers, body, path)
        message = refused(status, doc, "invalid_signature")
        assert headers[SIGNATURE_HEADER].split("sig=")[1] not in message
    # A mismatch did not use the nonce up: the genuine request still goes through.
    assert (await post(gw.url, cases[0][0]))[0] == 200


async def test_garbled_headers_unknown_keys_and_bearer_keys(gw):
    signer = Signer(await gw.create_key(require_signature=True))
    good = signer.header()[SIGNATURE_HEADER]
    sig = good.split("sig=")[1]
    garbled = ["", "sig", good + ",extra=1", good + ",ts=1", good.replace("nonce=", "nonce=!"),
               good.replace("keyId=", "keyid="), good.replace("sig=" + sig, "sig=" + sig[:-1]),
               re.sub(r"nonce=[^,]+", "nonce=short", good), good.replace("ts=", "ts=-"), good.replace("ts=", "ts=0"),
               "x" * 600]
    for value in garbled:
        status, doc = await post(gw.url, {SIGNATURE_HEADER: value})
        message = refused(status, doc, "invalid_signature_header")
        assert sig not in message and signer.id not in message
    unknown = Signer({"id": "key_0000000000000000", "key": signer.secret})
    status, doc = await post(gw.url, unknown.header())
    assert "Unknown key id" in refused(status, doc, "invalid_api_key")
    bearer = Signer(await gw.create_key(name="bearer"))  # a bearer key cannot sign
    refused(*await post(gw.url, bearer.header()), "signature_not_enabled")
    assert (await post(gw.url, {"Authorization": f"Bearer {bearer.secret}"}))[0] == 200


async def test_a_revoked_signing_key_is_refused_at_once(gw):
    created = await gw.create_key(require_signature=True)
    signer = Signer(created)
    assert (await post(gw.url, signer.header()))[0] == 200  # now cached by id
    assert (await gw.admin.post(f"/admin/v1/api-keys/{created['id']}/revoke")).status_code == 200
    refused(*await post(gw.url, signer.header()), "revoked_api_key")


async def test_refused_requests_reserve_no_rate_limit(gw):
    signer = Signer(await gw.create_key(require_signature=True, rpm_limit=2))
    for _ in range(5):
        refused(*await post(gw.url, signer.header(ts=int(time.time()) - 1000)), "signature_expired")
        refused(*await post(gw.url, signer.header(BODY, target="/v1/embeddings")), "invalid_signature")
    assert [(await post(gw.url, signer.header()))[0] for _ in range(3)] == [200, 200, 429]


async def test_the_store_holds_a_derived_key_never_the_secret(gw, tmp_path):
    created = await gw.create_key(require_signature=True)
    listed = (await gw.admin.get("/admin/v1/api-keys")).json()
    assert [k["require_signature"] for k in listed] == [True]
    assert all("signing_key" not in k and "key_hash" not in k for k in listed)
    stored = await gw.app[appkeys.STORE].get_api_key(created["id"])
    assert stored.signing_key == derive_signing_key(created["key"]) != created["key"]
    assert stored.key_hash == hashlib.sha256(created["key"].encode()).hexdigest()
    for path in (tmp_path / "state").rglob("*"):  # the database, its WAL, the spool ...
        assert not path.is_file() or created["key"].encode() not in path.read_bytes(), path
    audit = (await gw.admin.get("/admin/v1/audit")).text
    assert created["id"] in audit and stored.signing_key not in audit and created["key"] not in audit


async def test_store_round_trip_and_checks(store):
    org = await store.create_org("acme")
    signing_key = derive_signing_key("sk-fg-secret")
    key = await store.create_api_key(org.id, name="s", key_hash="h1", prefix="sk-fg-se", require_signature=True,
                                     signing_key=signing_key)
    plain = await store.create_api_key(org.id, name="b", key_hash="h2", prefix="sk-fg-se")
    assert (await store.get_api_key(key.id)) == key and key.require_signature and key.signing_key == signing_key
    assert (await store.find_api_key_by_hash("h2")) == plain and plain.signing_key is None
    assert [k.require_signature for k in await store.list_api_keys(org.id)] == [True, False]
    assert "signing_key" not in key.to_dict()
    for bad in ({"require_signature": True}, {"signing_key": signing_key},
                {"require_signature": True, "signing_key": "zz" * 32}):
        with pytest.raises(Exception, match="signing_key") as e:
            await store.create_api_key(org.id, name="x", key_hash="h3", prefix="p", **bad)
        assert e.value.status == 400


async def test_create_key_bad_input(gw):
    for value in ("yes", 1, [True], {"a": 1}):
        r = await gw.admin.post("/admin/v1/api-keys", json={"org": "acme", "require_signature": value})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "require_signature"
    r = await gw.admin.post("/admin/v1/api-keys", json={"org": "acme", "require_signature": None})
    assert r.status_code == 201 and r.json()["require_signature"] is False


async def test_a_nonce_used_on_one_replica_is_refused_on_another(tmp_path, redis_url):
    async with sim_pod("m") as pod:
        settings = {"redis_url": redis_url, "database_url": f"sqlite:///{tmp_path / 'shared.db'}"}
        async with running_gateway(gateway_settings(tmp_path / "a", **settings)) as a, \
                running_gateway(gateway_settings(tmp_path / "b", **settings)) as b:
            await a.create_org("acme")
            await a.register("m", pod)
            signer = Signer(await a.create_key(require_signature=True))
            headers = signer.header()
            assert (await post(a.url, headers))[0] == 200
            refused(*await post(b.url, headers), "replayed_request")
            fresh = signer.header()
            assert (await post(b.url, fresh))[0] == 200
            refused(*await post(a.url, fresh), "replayed_request")
            redis = aioredis.Redis.from_url(redis_url)
            try:
                nonce = fresh[SIGNATURE_HEADER].split("nonce=")[1].split(",")[0]
                ttl = await redis.ttl(RedisNonces(redis.execute_command, RedisKeys()).key(signer.id, nonce))
                assert 295 <= ttl <= 302
                # The Redis key cache never holds a signing key.
                for name in await redis.keys("fg:apikey:*"):
                    assert signer.signing_key.encode() not in await redis.get(name)
            finally:
                await redis.aclose()


async def test_redis_outage_falls_back_to_this_process():
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    try:
        nonces = RedisNonces(dead.execute_command, RedisKeys())
        now = time.time()
        assert await nonces.claim("key_a", "n" * 16, int(now), now)
        assert not await nonces.claim("key_a", "n" * 16, int(now), now)
        assert nonces.failures == 2
    finally:
        await dead.aclose()


def test_local_nonces_expire_and_never_forget_a_replay_when_full():
    nonces = LocalNonces(max_entries=3)
    t0 = 1_000_000
    assert nonces.claim_now("k", "a" * 16, t0, t0) and not nonces.claim_now("k", "a" * 16, t0, t0)
    assert nonces.claim_now("k2", "a" * 16, t0, t0)  # nonces are per key
    assert nonces.claim_now("k", "b" * 16, t0 + 1, t0 + 1)
    assert nonces.claim_now("k", "c" * 16, t0 + 2, t0 + 2)  # full: the t0 entries go, t0 becomes unverifiable
    assert len(nonces) == 2
    assert not nonces.claim_now("k", "a" * 16, t0, t0 + 2)  # the dropped nonce is still refused
    assert not nonces.claim_now("k", "d" * 16, t0, t0 + 2)  # as is anything signed at t0
    assert nonces.claim_now("k", "e" * 16, t0 + 2, t0 + 2)  # full again: t0 + 1 goes
    # Once a timestamp leaves the window, its nonces are forgotten (the window check refuses it first).
    later = t0 + 2 + 300 + 2
    assert nonces.claim_now("k", "f" * 16, later, later) and len(nonces) == 1


async def test_opsctl_key_create_require_signature(gw, monkeypatch):
    monkeypatch.setenv("FLEETGATE_GATEWAY_URL", gw.url)
    monkeypatch.setenv("FLEETGATE_ADMIN_TOKEN", ADMIN_TOKEN)
    runner = CliRunner()

    async def opsctl(*args: str):
        return await asyncio.to_thread(runner.invoke, opsctl_app, list(args))

    out = await opsctl("key", "create", "--org", "acme", "--name", "svc", "--require-signature", "-o", "json")
    assert out.exit_code == 0, out.output
    created = json.loads(out.stdout)
    assert created["require_signature"] is True and created["key"].startswith("sk-fg-")
    out = await opsctl("key", "create", "--org", "acme", "--name", "svc2", "--require-signature")
    assert out.exit_code == 0 and "Signed requests only" in out.stdout
    out = await opsctl("key", "list", "-o", "json")
    assert sorted(k["require_signature"] for k in json.loads(out.stdout)) == [True, True]
    assert "REQUIRE_SIGNATURE" in (await opsctl("key", "list")).stdout.upper()
    out = await opsctl("key", "create", "--org", "acme", "--require-signature=maybe")
    assert out.exit_code == 2
    # The created key signs through the gateway.
    assert (await post(gw.url, Signer(created).header()))[0] == 200


async def test_keys_made_before_migration_5_stay_bearer_keys(database_url):
    db = open_database(database_url)
    await db.open()
    try:
        now = "2026-01-01T00:00:00.000000+00:00"
        await apply_migrations(db, now=now, migrations=[m for m in MIGRATIONS if m.version < 5])
        await db.execute("INSERT INTO organizations (id, name, created_at) VALUES (?, ?, ?)", ("org_1", "acme", now))
        await db.execute("INSERT INTO api_keys (id, org_id, name, prefix, key_hash, status, created_at)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?)", ("key_1", "org_1", "old", "sk-fg-ol", "h", "active", now))
        assert 5 in await apply_migrations(db, now=now)
    finally:
        await db.close()
    store = open_store(database_url)
    await store.open()
    try:
        key = await store.get_api_key("key_1")
        assert key.require_signature is False and key.signing_key is None
    finally:
        await store.close()
