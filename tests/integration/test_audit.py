"""The audit log: every admin mutation once, with actor, before/after, request id and source; never a secret;
filters and id-cursor paging (stable under concurrent writes); streamed JSONL/CSV exports; org scoping; the
Redis stream mirror. Real gateway, real SQLite/PostgreSQL, real Redis."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import logging
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import redis.asyncio as aioredis

from gateway import appkeys
from gateway.admin import auditing
from gateway.admin.access import RULES
from gateway.admin.audit import CSV_COLUMNS, EXPORT_BATCH
from gateway.errors import InvalidRequest
from gateway.store.models import AuditEntry, AuditFilter
from tests.fleet import gateway_settings, running_gateway, sim_pod
from tests.support import eventually

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
# Mutating routes that change no control-plane state, so they are not audited: a smoke test only sends
# requests, a flush writes usage rows, a rollout's step events are its own append-only timeline.
NOT_AUDITED = {
    ("POST", "/admin/v1/endpoints/{endpoint_id}/smoke"),
    ("POST", "/admin/v1/usage/flush"),
    ("POST", "/admin/v1/rollouts/{rollout_id}/events"),
}
SOURCE = "git:https://git.example/fleet.git#main@0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
async def gw(tmp_path):
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        yield gw


async def all_entries(gw, **params) -> list[dict]:
    r = await gw.admin.get("/admin/v1/audit", params={"limit": 1000, **params})
    assert r.status_code == 200, r.text
    return r.json()


class Mutations:
    """Sends admin mutations and checks that each left exactly one entry, by its request id."""

    def __init__(self, gw) -> None:
        self.gw = gw
        self.routes: set[tuple[str, str]] = set()
        self.count = 0

    async def __call__(self, route: tuple[str, str], path: str, body: dict | None = None, *,
                       action: str, created: bool = False, removed: bool = False, **headers: str) -> dict:
        method = route[0]
        r = await self.gw.admin.request(method, path, json=body, headers=headers)
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
        self.routes.add(route)
        self.count += 1
        mine = [e for e in await all_entries(self.gw) if e["request_id"] == r.headers["x-request-id"]]
        assert len(mine) == 1, f"{method} {path} left {len(mine)} audit entries"
        entry = mine[0]
        assert entry["action"] == action
        assert entry["actor"] == "bootstrap" and entry["actor_type"] == "bootstrap"
        assert entry["source_ip"] == "127.0.0.1"
        assert (entry["before"] is None) == created, entry
        assert (entry["after"] is None) == removed, entry
        return {"response": r.json(), "entry": entry}


async def test_every_admin_mutation_is_audited_once_with_before_and_after(gw):
    m = Mutations(gw)
    org = (await m(("POST", "/admin/v1/organizations"), "/admin/v1/organizations", {"name": "acme"},
                   action="org.create", created=True))
    org_id = org["response"]["id"]
    assert org["entry"]["org_id"] == org_id and org["entry"]["after"]["name"] == "acme"
    upd = await m(("PATCH", "/admin/v1/organizations/{org}"), "/admin/v1/organizations/acme", {"rpm_limit": 100},
                  action="org.update", **{auditing.SOURCE_HEADER: SOURCE})
    assert upd["entry"]["before"]["rpm_limit"] is None and upd["entry"]["after"]["rpm_limit"] == 100
    assert upd["entry"]["detail"] == {"rpm_limit": 100} and upd["entry"]["source"] == SOURCE
    # a repeat that changes nothing is not a change
    r = await gw.admin.patch("/admin/v1/organizations/acme", json={"rpm_limit": 100})
    assert r.status_code == 200
    assert not [e for e in await all_entries(gw) if e["request_id"] == r.headers["x-request-id"]]

    key = await m(("POST", "/admin/v1/api-keys"), "/admin/v1/api-keys", {"org": "acme", "name": "web"},
                  action="key.create", created=True)
    key_id = key["response"]["id"]
    assert key["entry"]["org_id"] == org_id and key["entry"]["target"] == key_id
    patched = await m(("PATCH", "/admin/v1/api-keys/{key_id}"), f"/admin/v1/api-keys/{key_id}", {"rpm_limit": 5},
                      action="key.update")
    assert patched["entry"]["detail"] == {"rpm_limit": 5}
    revoked = await m(("POST", "/admin/v1/api-keys/{key_id}/revoke"), f"/admin/v1/api-keys/{key_id}/revoke",
                      action="key.revoke")
    assert (revoked["entry"]["before"]["status"], revoked["entry"]["after"]["status"]) == ("active", "revoked")
    other_key = (await gw.create_key("acme", name="other"))["id"]
    m.count += 1
    await m(("DELETE", "/admin/v1/api-keys/{key_id}"), f"/admin/v1/api-keys/{other_key}", action="key.revoke")

    budget = await m(("PUT", "/admin/v1/budgets"), "/admin/v1/budgets", {"org": "acme", "usd": 1, "period": "daily"},
                     action="budget.set", created=True)
    replaced = await m(("POST", "/admin/v1/budgets"), "/admin/v1/budgets",
                       {"org": "acme", "usd": 2, "period": "daily"}, action="budget.set")
    assert (replaced["entry"]["before"]["limit_usd"], replaced["entry"]["after"]["limit_usd"]) == (1, 2)
    assert replaced["entry"]["org_id"] == org_id
    rebuilt = await m(("POST", "/admin/v1/budgets/rebuild"), "/admin/v1/budgets/rebuild", {"org": "acme"},
                      action="budget.rebuild")
    assert rebuilt["entry"]["after"]["spent_micros"] == {budget["response"]["id"]: 0}
    await m(("DELETE", "/admin/v1/budgets/{budget_id}"), f"/admin/v1/budgets/{budget['response']['id']}",
            action="budget.delete", removed=True)

    model = await m(("POST", "/admin/v1/models"), "/admin/v1/models",
                    {"name": "m1", "endpoint": "http://127.0.0.1:9/v1"}, action="registry.register", created=True)
    assert [e["url"] for e in model["entry"]["after"]["endpoints"]] == ["http://127.0.0.1:9/v1"]
    second = await m(("POST", "/admin/v1/models"), "/admin/v1/models",
                     {"name": "m1", "endpoint": "http://127.0.0.1:10/v1", "release": "canary", "weight": 0},
                     action="registry.register")
    assert len(second["entry"]["before"]["endpoints"]) == 1 and len(second["entry"]["after"]["endpoints"]) == 2
    priced = await m(("PATCH", "/admin/v1/models/{env}/{name}"), "/admin/v1/models/production/m1",
                     {"input_price": 2.5}, action="registry.update")
    assert priced["entry"]["detail"]["input_price"] == 2.5
    canary = second["response"]["endpoint"]["id"]
    weighted = await m(("PATCH", "/admin/v1/endpoints/{endpoint_id}"), f"/admin/v1/endpoints/{canary}",
                       {"weight": 10}, action="endpoint.update")
    assert weighted["entry"]["detail"] == {"weight": 10} and weighted["entry"]["org_id"] is None
    await m(("DELETE", "/admin/v1/endpoints/{endpoint_id}"), f"/admin/v1/endpoints/{canary}",
            action="endpoint.delete", removed=True)
    await m(("DELETE", "/admin/v1/models/{env}/{name}"), "/admin/v1/models/production/m1",
            action="registry.deregister", removed=True)

    revision = {"model": "m1", "environment": "production", "deployer": "local", "track": "stable", "version": "v1",
                "status": "deployed"}
    await m(("POST", "/admin/v1/releases/{name}/revisions"), "/admin/v1/releases/m1-stable/revisions", revision,
            action="release.revision", created=True)
    superseded = await m(("PATCH", "/admin/v1/releases/{name}/revisions/{revision}"),
                         "/admin/v1/releases/m1-stable/revisions/1", {"status": "superseded"}, action="release.update")
    assert superseded["entry"]["detail"] == {"status": "superseded"}
    await m(("DELETE", "/admin/v1/releases/{name}"), "/admin/v1/releases/m1-stable", action="release.delete",
            removed=True)

    rollout = await m(("POST", "/admin/v1/rollouts"), "/admin/v1/rollouts",
                      {"model": "m1", "environment": "production", "version": "v2", "kind": "canary"},
                      action="rollout.start", created=True)
    stepped = await m(("PATCH", "/admin/v1/rollouts/{rollout_id}"), f"/admin/v1/rollouts/{rollout['response']['id']}",
                      {"expected_version_no": 1, "step": 1, "state": {"canary_weight": 10}}, action="rollout.update")
    assert stepped["entry"]["detail"] == {"step": 1, "state_keys": ["canary_weight"], "version_no": 2}

    user = await m(("POST", "/admin/v1/users"), "/admin/v1/users", {"name": "alice", "role": "viewer", "org": "acme"},
                   action="user.create", created=True)
    user_id = user["response"]["id"]
    await m(("PATCH", "/admin/v1/users/{user}"), f"/admin/v1/users/{user_id}", {"role": "operator"},
            action="user.update")
    token = await m(("POST", "/admin/v1/users/{user}/tokens"), f"/admin/v1/users/{user_id}/tokens", {},
                    action="user.token.create", created=True)
    await m(("DELETE", "/admin/v1/users/{user}/tokens/{token_id}"),
            f"/admin/v1/users/{user_id}/tokens/{token['response']['id']}", action="user.token.revoke")
    account = await m(("POST", "/admin/v1/service-accounts"), "/admin/v1/service-accounts",
                      {"name": "ci", "role": "operator"}, action="service_account.create", created=True)
    sa_id = account["response"]["id"]
    await m(("PATCH", "/admin/v1/service-accounts/{sa}"), f"/admin/v1/service-accounts/{sa_id}", {"role": "viewer"},
            action="service_account.update")
    await m(("POST", "/admin/v1/service-accounts/{sa}/secret"), f"/admin/v1/service-accounts/{sa_id}/secret", {},
            action="service_account.rotate_secret")
    await m(("POST", "/admin/v1/oauth2/keys/rotate"), "/admin/v1/oauth2/keys/rotate", {}, action="oauth2.key.rotate",
            created=True)
    await m(("PUT", "/admin/v1/config/ownership"), "/admin/v1/config/ownership",
            {"owner": "fleet", "objects": [{"kind": "org", "object_id": org_id, "name": "acme"}]},
            action="config.ownership")
    await m(("POST", "/admin/v1/config/applied"), "/admin/v1/config/applied",
            {"owner": "fleet", "summary": {"added": 1, "changed": 0, "removed": 0}}, action="config.apply",
            created=True)
    export = await m(("POST", "/analytics/v1/exports"), "/analytics/v1/exports",
                     {"org": "acme", "since": "2026-01-01", "until": "2026-01-02"}, action="export.create", created=True)
    assert export["entry"]["org_id"] == org_id and export["entry"]["target"] == export["response"]["id"]
    await gw.create_org("gone")
    m.count += 1
    await m(("DELETE", "/admin/v1/organizations/{org}"), "/admin/v1/organizations/gone", action="org.delete",
            removed=True)

    # reads are not audited; every mutating route of the access table was exercised above
    for path in ("/admin/v1/organizations", "/admin/v1/api-keys", "/admin/v1/models", "/admin/v1/audit"):
        assert (await gw.admin.get(path)).status_code == 200
    assert len(await all_entries(gw)) == m.count
    mutating = {route for route in RULES if route[0] in MUTATING}
    assert sorted(mutating - NOT_AUDITED - m.routes) == [], "mutating routes without an audit check here"


async def test_no_secret_reaches_the_audit_log(gw):
    await gw.create_org()
    secrets = [(await gw.create_key())["key"], (await gw.create_key(name="signed", require_signature=True))["key"]]
    user = (await gw.admin.post("/admin/v1/users", json={"name": "bob", "role": "admin"})).json()
    secrets.append((await gw.admin.post(f"/admin/v1/users/{user['id']}/tokens", json={})).json()["token"])
    account = (await gw.admin.post("/admin/v1/service-accounts", json={"name": "ci", "role": "admin"})).json()
    secrets.append(account["client_secret"])
    secrets.append((await gw.admin.post(f"/admin/v1/service-accounts/{account['id']}/secret")).json()["client_secret"])
    assert len(set(secrets)) == 5
    texts = [(await gw.admin.get("/admin/v1/audit")).text]
    for fmt in ("jsonl", "csv"):
        texts.append((await gw.admin.get("/admin/v1/audit/export", params={"format": fmt})).text)
    digests = [hashlib.sha256(s.encode()).hexdigest() for s in secrets]
    for text in texts:
        assert "key.create" in text and "service_account.rotate_secret" in text
        for secret in secrets + digests:
            assert secret not in text and secret[-20:] not in text
        assert "_hash" not in text and "signing_key" not in text and "private_pem" not in text


def test_record_drops_secret_fields_and_redacts_secret_values(caplog):
    leaked = "sk-fg-" + "A" * 43
    state = {"name": "web", "key_hash": "ab" * 32, "nested": {"client_secret": "x", "note": f"was {leaked}"},
             "values": [{"password": "hunter2"}, "fgp_" + "b" * 43], "prefix": "sk-fg-AAAAAA"}
    with caplog.at_level(logging.ERROR, logger="gateway.admin.auditing"):
        clean = auditing.scrub(state, "test.action")
    assert clean == {"name": "web", "nested": {"note": auditing.REDACTED}, "values": [{}, auditing.REDACTED],
                     "prefix": "sk-fg-AAAAAA"}  # a display prefix is not a secret
    assert leaked not in caplog.text and "nested.note" in caplog.text


async def test_exports_parse_with_csv_and_json_and_match_the_list(gw):
    await gw.create_org()
    await gw.create_key(models=["a", "b"])
    await gw.admin.patch("/admin/v1/organizations/acme", json={"tpm_limit": 9},
                         headers={auditing.SOURCE_HEADER: 'git:repo "quoted", with comma'})
    listed = list(reversed(await all_entries(gw)))  # oldest first, as exports are
    r = await gw.admin.get("/admin/v1/audit/export")
    assert r.headers["content-type"] == "application/x-ndjson" and r.headers["transfer-encoding"] == "chunked"
    assert r.headers["content-disposition"].startswith('attachment; filename="fleetgate-audit-')
    assert [json.loads(line) for line in r.text.splitlines()] == listed

    r = await gw.admin.get("/admin/v1/audit/export", params={"format": "csv"})
    assert r.headers["content-type"].startswith("text/csv") and '.csv"' in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert tuple(csv.DictReader(io.StringIO(r.text)).fieldnames) == CSV_COLUMNS
    assert len(rows) == len(listed) == 3
    for row, entry in zip(rows, listed, strict=True):
        for column in CSV_COLUMNS:
            value = entry[column]
            if isinstance(value, dict):
                assert json.loads(row[column]) == value
            else:
                assert row[column] == ("" if value is None else str(value)), column
    assert rows[-1]["source"] == 'git:repo "quoted", with comma'


async def test_filters_and_bad_filters(gw):
    store = gw.app[appkeys.STORE]
    await gw.create_org()
    await gw.create_key()
    await gw.register("m", "http://127.0.0.1:9/v1")
    await store.add_audit("user:carol", "service_account.create", "sa_1")
    await store.add_audit("user:carol", "serviceXaccount.create", "sa_2")  # '_' is no wildcard

    async def actions(**params) -> list[str]:
        return [e["action"] for e in await all_entries(gw, **params)]

    assert await actions(action="key.*") == ["key.create"]
    assert await actions(action="KEY.*") == []  # case matters
    assert await actions(action="service_account.*") == ["service_account.create"]
    assert await actions(action="org.create") == ["org.create"]
    assert await actions(actor="user:carol") == ["serviceXaccount.create", "service_account.create"]
    assert await actions(target="sa_2") == ["serviceXaccount.create"]
    assert await actions(org="acme") == ["key.create", "org.create"]
    assert await actions(since="1h") == await actions(action="*")
    assert len(await actions()) == 5
    assert await actions(until="2000-01-01") == [] and await actions(since="2999-01-01") == []
    now = datetime.now(UTC)
    minute = timedelta(minutes=1)
    assert len(await actions(since=(now - minute).isoformat(), until=(now + minute).isoformat())) == 5

    bad = [
        ({"since": "yesterday"}, "since"), ({"until": "soon"}, "until"),
        ({"since": "2026-02-01", "until": "2026-01-01"}, "until"),
        ({"action": "key.**"}, "action"), ({"action": "key create"}, "action"), ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"), ({"limit": "ten"}, "limit"), ({"before_id": "0"}, "before_id"),
        ({"before_id": "-3"}, "before_id"), ({"before_id": "9" * 40}, "before_id"), ({"actor": "a\tb"}, "actor"),
        ({"target": "x" * 500}, "target"),
    ]
    for params, param in bad:
        for path in ("/admin/v1/audit", "/admin/v1/audit/export"):
            if path.endswith("export") and param in ("limit", "before_id"):
                continue
            r = await gw.admin.get(path, params=params)
            assert r.status_code == 400, (path, params, r.text)
            assert r.json()["error"]["param"] == param, (path, params, r.json())
    r = await gw.admin.get("/admin/v1/audit/export", params={"format": "xml"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "format"
    r = await gw.admin.get("/admin/v1/audit", params={"org": "nope"})
    assert r.status_code == 404


async def test_a_bad_change_source_is_refused_before_anything_changes(gw):
    before = await all_entries(gw)
    for value in ["x" * 300, "git:https://h/r#main@abc sk-fg-" + "A" * 43, b"caf\xe9"]:
        r = await gw.admin.post("/admin/v1/organizations", json={"name": "acme"},
                                headers={auditing.SOURCE_HEADER: value})
        assert r.status_code == 400, (value, r.text)
        assert r.json()["error"]["param"] == auditing.SOURCE_HEADER
    assert (await gw.admin.get("/admin/v1/organizations")).json() == [] and await all_entries(gw) == before
    r = await gw.admin.post("/admin/v1/organizations", json={"name": "acme"},
                            headers={auditing.SOURCE_HEADER: "git:https://bot:s3cret@git.example/r.git#main@abcd"})
    assert r.status_code == 201
    assert (await all_entries(gw))[0]["source"] == "git:https://***@git.example/r.git#main@abcd"


async def test_paging_is_stable_while_entries_are_added(gw):
    store = gw.app[appkeys.STORE]
    for i in range(40):
        await store.add_audit("bootstrap", "org.update" if i % 2 else "key.update", f"t{i}")
    existing = [e.id for e in await store.list_audit(limit=100)]

    async def writer() -> None:
        for i in range(60):
            await store.add_audit("bootstrap", "key.update", f"new{i}")
            await asyncio.sleep(0)

    async def pages(**params) -> list[int]:
        seen: list[int] = []
        cursor = None
        while True:
            r = await gw.admin.get("/admin/v1/audit", params={"limit": 7, **params,
                                                              **({"before_id": cursor} if cursor else {})})
            seen += [e["id"] for e in r.json()]
            cursor = r.headers.get("X-Next-Before-Id")
            if cursor is None:
                return seen
            assert int(cursor) == seen[-1]

    task = asyncio.create_task(writer())
    first = (await gw.admin.get("/admin/v1/audit", params={"limit": 1})).json()[0]["id"]
    seen = await pages()
    keys_only = await pages(action="key.*")
    await task
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == len(seen)
    final = [e.id for e in await store.list_audit(limit=1000)]
    # every entry there when paging began is read once, in order; later ones may or may not be
    assert set(existing) <= set(seen) and [i for i in seen if i <= first] == [i for i in final if i <= first]
    all_keys = {e.id for e in await store.list_audit(AuditFilter(action="key.*"), limit=1000)}
    assert set(keys_only) <= all_keys and {i for i in all_keys if i <= first} <= set(keys_only)


async def test_export_streams_in_batches_and_ends_at_its_start(gw):
    store = gw.app[appkeys.STORE]
    total = EXPORT_BATCH * 2 + 17
    for i in range(total):
        await store.add_audit("bootstrap", "org.update", f"t{i}", {"i": i})

    async def writer() -> None:
        for i in range(50):
            await store.add_audit("bootstrap", "org.update", f"late{i}")
            await asyncio.sleep(0)

    task = asyncio.create_task(writer())
    ids = []
    async with gw.admin.stream("GET", "/admin/v1/audit/export", params={"action": "org.*"}) as r:
        async for line in r.aiter_lines():
            if line:
                ids.append(json.loads(line)["id"])
    await task
    assert ids == list(range(1, len(ids) + 1)) and total <= len(ids) <= total + 50
    r = await gw.admin.get("/admin/v1/audit/export", params={"format": "csv", "target": "t5"})
    assert [row["target"] for row in csv.DictReader(io.StringIO(r.text))] == ["t5"]


async def test_org_principals_see_only_their_org(gw):
    acme = (await gw.create_org("acme"))["id"]
    other = (await gw.create_org("other"))["id"]
    await gw.create_key("acme")
    await gw.create_key("other")
    await gw.register("m", "http://127.0.0.1:9/v1")  # fleet-wide: org principals do not see it
    user = (await gw.admin.post("/admin/v1/users", json={"name": "av", "role": "viewer", "org": "acme"})).json()
    token = (await gw.admin.post(f"/admin/v1/users/{user['id']}/tokens", json={})).json()["token"]
    async with httpx.AsyncClient(base_url=gw.url, headers={"Authorization": f"Bearer {token}"}) as viewer:
        seen = (await viewer.get("/admin/v1/audit")).json()
        assert seen and {e["org_id"] for e in seen} == {acme}
        assert {e["action"] for e in seen} == {"org.create", "key.create", "user.create", "user.token.create"}
        assert (await viewer.get("/admin/v1/audit", params={"org": "acme"})).json() == seen
        exported = [json.loads(line) for line in (await viewer.get("/admin/v1/audit/export")).text.splitlines()]
        assert exported == list(reversed(seen))
        for path in ("/admin/v1/audit", "/admin/v1/audit/export"):
            for org in ("other", other):
                r = await viewer.get(path, params={"org": org})
                assert r.status_code == 403 and r.json()["error"]["code"] == "org_scope_denied"
    everything = await all_entries(gw)
    assert {e["org_id"] for e in everything} == {acme, other, None}


async def test_entries_are_mirrored_to_the_redis_stream(tmp_path, redis_url):
    settings = gateway_settings(tmp_path, redis_url=redis_url, audit_stream_maxlen=1000)
    async with sim_pod("m") as pod, running_gateway(settings) as gw:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            await gw.create_org()
            await gw.register("m", pod, input_price=0, output_price=1000, max_tokens=10)  # 10k micros a call
            r = await gw.admin.put("/admin/v1/budgets", json={"org": "acme", "usd": 0.05, "period": "daily",
                                                              "soft_limit_pct": 50})
            assert r.status_code == 200
            key = (await gw.create_key())["key"]
            stream = await client.xrange("fg:audit")
            listed = list(reversed(await all_entries(gw)))
            assert [fields for _, fields in stream] == [auditing.flat(AuditEntry.from_dict(e)) for e in listed]
            assert [f["action"] for _, f in stream] == ["org.create", "registry.register", "budget.set", "key.create"]
            assert json.loads(stream[-1][1]["after"])["org_id"] == listed[0]["org_id"]

            async with httpx.AsyncClient(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}) as app:
                for _ in range(4):
                    r = await app.post("/v1/chat/completions", json={
                        "model": "m", "messages": [{"role": "user", "content": "x"}], "ignore_eos": True})
                    assert r.status_code == 200, r.text

            async def soft_limit_mirrored() -> bool:
                return any(f["action"] == "budget.soft_limit" for _, f in await client.xrange("fg:audit"))

            await eventually(soft_limit_mirrored, what="the soft-limit entry in the stream")
            alert = [f for _, f in await client.xrange("fg:audit") if f["action"] == "budget.soft_limit"][0]
            assert (alert["actor"], alert["actor_type"], alert["org_id"]) == ("gateway", "gateway", listed[0]["org_id"])
        finally:
            await client.aclose()


async def test_a_redis_outage_never_fails_the_change(tmp_path, redis_server, redis_url, caplog):
    settings = gateway_settings(tmp_path, redis_url=redis_url, redis_timeout_ms=200)
    revision = {"model": "m", "environment": "production", "deployer": "local", "track": "stable", "version": "v1",
                "status": "deployed"}
    async with running_gateway(settings) as gw:
        redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="gateway.admin.auditing"):
            for n in (1, 2):
                r = await gw.admin.post("/admin/v1/releases/r/revisions", json=revision)
                assert r.status_code == 201, r.text
        assert [e["action"] for e in await all_entries(gw)] == ["release.revision"] * 2
        assert caplog.text.count("are not reaching the Redis stream fg:audit") == 1  # once per outage
        metrics = (await gw.admin.get("/metrics")).text
        assert 'fleetgate_audit_stream_failures_total{error="connection"} 2.0' in metrics
        redis_server.start()
        r = await gw.admin.post("/admin/v1/releases/r/revisions", json=revision)
        assert r.status_code == 201
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            assert [f["target"] for _, f in await client.xrange("fg:audit")] == ["r"]
        finally:
            await client.aclose()


async def test_no_stream_when_disabled(tmp_path, redis_url):
    async with running_gateway(gateway_settings(tmp_path, redis_url=redis_url, audit_stream="")) as gw:
        await gw.create_org()
        client = aioredis.Redis.from_url(redis_url)
        try:
            assert await client.exists("fg:audit") == 0
        finally:
            await client.aclose()


# the store, on SQLite and PostgreSQL ---------------------------------------------------------


async def test_store_filters_cursors_and_old_rows(store):
    # A row as schema versions 1-5 wrote it: none of the new columns.
    await store._db.execute("INSERT INTO audit_log (ts, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                            ("2020-01-01T00:00:00.000000+00:00", "admin", "org.create", "org_old", '{"name": "x"}'))
    a = await store.add_audit("user:a", "key.create", "key_1", {"name": "k"}, actor_type="user", actor_id="usr_1",
                              org_id="org_1", request_id="r1", source_ip="10.0.0.1", source="git:x",
                              after={"name": "k"})
    b = await store.add_audit("user:b", "key.revoke", "key_1", org_id="org_1", before={"s": "active"},
                              after={"s": "revoked"})
    c = await store.add_audit("gateway", "budget.soft_limit", "bud_1", org_id="org_2")
    old = (await store.list_audit(AuditFilter(target="org_old")))[0]
    assert (old.actor, old.detail, old.before, old.after, old.org_id, old.actor_type) == (
        "admin", {"name": "x"}, None, None, None, None)
    assert (a.request_id, a.source_ip, a.source, a.actor_id, a.after) == ("r1", "10.0.0.1", "git:x", "usr_1",
                                                                        {"name": "k"})
    assert [e.id for e in await store.list_audit(AuditFilter(org_id="org_1"))] == [b.id, a.id]
    assert [e.id for e in await store.list_audit(AuditFilter(action="key.*", actor="user:b"))] == [b.id]
    assert [e.id for e in await store.list_audit(AuditFilter(since=datetime(2021, 1, 1, tzinfo=UTC)))] == [
        c.id, b.id, a.id]
    assert [e.target for e in await store.list_audit(AuditFilter(until=datetime(2021, 1, 1, tzinfo=UTC)))] == [
        "org_old"]
    assert [e.id for e in await store.list_audit(limit=2, before_id=c.id)] == [b.id, a.id]
    assert [e.id for e in await store.list_audit(after_id=old.id, before_id=c.id, oldest_first=True)] == [a.id, b.id]
    with pytest.raises(InvalidRequest, match="before_id"):
        await store.list_audit(before_id=-1)
