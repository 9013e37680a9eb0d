"""Server side of declarative config: ownership, apply records, and the key/budget/org CRUD that apply and prune use.

Store methods run on SQLite and PostgreSQL (`store`); the API runs in a real gateway on SQLite, and the
data-plane cases send real requests through it to a simulator pod.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from gateway.errors import Conflict, InvalidRequest, NotFound
from tests.fleet import gateway_settings, running_gateway, sim_pod

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def after_of(entry: dict) -> dict | None:
    """An audit entry's `after`: its own column (schema 6), or inside `detail` (as written before)."""
    return entry.get("after") or (entry.get("detail") or {}).get("after")


async def audit(gw, action: str) -> list[dict]:
    r = await gw.admin.get("/admin/v1/audit", params={"limit": 1000})
    assert r.status_code == 200, r.text
    return [e for e in r.json() if e["action"] == action]


async def chat(gw, secret: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
        return await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {secret}"})


@pytest.fixture
async def gw(tmp_path):
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        await gw.create_org("acme")
        yield gw


# store, on both backends ---------------------------------------------------------------


async def test_store_ownership_replace_rename_release_and_adopt(store):
    acme = await store.create_org("acme")
    beta = await store.create_org("beta")
    key = await store.create_api_key(acme.id, name="web", key_hash="h1", prefix="sk-fg-1")
    change = await store.replace_owned("team-a", [("org", acme.id, "acme"), ("api_key", key.id, "acme/web")])
    assert [(o.kind, o.name, o.owner) for o in change.added] == [("api_key", "acme/web", "team-a"),
                                                                ("org", "acme", "team-a")]
    assert change.changed and not change.removed and not change.adopted
    assert [o.object_id for o in await store.list_owned(owner="team-a", kind="org")] == [acme.id]

    same = await store.replace_owned("team-a", [("api_key", key.id, "acme/web"), ("org", acme.id, "acme")])
    assert not same.changed and len(same.objects) == 2
    assert same.objects[0].updated_at == change.objects[0].updated_at  # untouched rows keep their time
    renamed = await store.replace_owned("team-a", [("org", acme.id, "acme-renamed")])
    assert [o.name for o in renamed.renamed] == ["acme-renamed"]
    assert [o.object_id for o in renamed.removed] == [key.id]
    assert (await store.get_api_key(key.id)).status == "active"  # disowned, never touched

    with pytest.raises(Conflict, match=r"1 object\(s\) are owned by another config: org 'acme-renamed'") as e:
        await store.replace_owned("team-b", [("org", acme.id, "acme"), ("org", beta.id, "beta")])
    assert e.value.code == "owned_by_another_config"
    assert await store.list_owned(owner="team-b") == []  # all or nothing
    taken = await store.replace_owned("team-b", [("org", acme.id, "acme"), ("org", beta.id, "beta")], adopt=True)
    assert [(o.object_id, o.owner) for o in taken.adopted] == [(acme.id, "team-a")]
    assert await store.list_owned(owner="team-a") == []
    assert [(o.owner, o.name) for o in await store.list_owned()] == [("team-b", "acme"), ("team-b", "beta")]
    assert (await store.replace_owned("team-b", [])).removed and await store.list_owned() == []


async def test_store_ownership_refuses_bad_objects(store):
    org = await store.create_org("acme")
    bad = [
        ([("org", "key_0123456789abcdef", "x")], "objects[0].object_id", "is not the id of a org"),
        ([("orgs", org.id, "x")], "objects[0].kind", "must be one of"),
        ([("org", org.id, "a"), ("org", org.id, "b")], "objects[1].object_id", "repeats org"),
        ([("org", org.id, "two\nlines")], "objects[0].name", "one non-empty line"),
        ([("org", org.id, " ")], "objects[0].name", "one non-empty line"),
    ]
    for objects, param, message in bad:
        with pytest.raises(InvalidRequest, match=message) as e:
            await store.replace_owned("team-a", objects)
        assert e.value.param == param
    with pytest.raises(InvalidRequest):
        await store.list_owned(kind="nope")


async def test_store_update_api_key_changes_clears_and_refuses_revoked(store):
    org = await store.create_org("acme")
    key = await store.create_api_key(org.id, name="web", key_hash="h1", prefix="p", rpm_limit=10,
                                     allowed_models=("a",), environment="staging")
    expiry = datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    changed = await store.update_api_key(key.id, name="web2", rpm_limit=None, tpm_limit=500, allowed_models=(),
                                         environment=None, expires_at=expiry)
    assert (changed.name, changed.rpm_limit, changed.tpm_limit, changed.allowed_models, changed.environment,
            changed.expires_at) == ("web2", None, 500, (), None, expiry)
    assert await store.get_api_key(key.id) == changed
    assert await store.update_api_key(key.id) == changed
    with pytest.raises(InvalidRequest, match="status cannot be changed"):
        await store.update_api_key(key.id, status="revoked")
    with pytest.raises(NotFound):
        await store.update_api_key("key_nope", name="x")
    await store.revoke_api_key(key.id)
    with pytest.raises(Conflict, match="is revoked") as e:
        await store.update_api_key(key.id, rpm_limit=5)
    assert e.value.code == "key_revoked"


async def test_store_delete_org_refuses_while_it_holds_live_objects(store):
    org = await store.create_org("acme")
    key = await store.create_api_key(org.id, name="web", key_hash="h1", prefix="p")
    budget = await store.set_budget(org.id, limit_micros=5, period="daily")
    user = await store.create_user("alice", role="viewer", org_id=org.id)
    account = await store.create_service_account("ci", role="operator", client_id="fgc_1", secret_hash="s",
                                                 org_id=org.id)
    with pytest.raises(Conflict, match="still has 1 active API key.*1 active user.*1 active service account.*"
                                       "1 budget") as e:
        await store.delete_org("acme")
    assert e.value.code == "org_not_empty"
    assert await store.get_budget(budget.id) == budget
    await store.revoke_api_key(key.id)
    await store.update_user(user.id, status="disabled")
    await store.update_service_account(account.id, status="disabled")
    await store.delete_budget(budget.id)
    with pytest.raises(NotFound):
        await store.get_budget(budget.id)
    await store.delete_org(org.id)
    with pytest.raises(NotFound):
        await store.get_org("acme")
    with pytest.raises(NotFound):  # revoked keys and disabled users go with their org
        await store.get_api_key(key.id)
    with pytest.raises(NotFound):
        await store.get_user(user.id)
    with pytest.raises(NotFound):
        await store.delete_org("acme")


async def test_store_races_never_lose_a_key_or_share_an_object(store):
    """A key created while its org is deleted is either counted (409) or refused, never cascaded away unseen;
    two configs claiming one object at once: exactly one wins."""
    for round_ in range(4):
        org = await store.create_org(f"org{round_}")
        deleted, created = await asyncio.gather(
            store.delete_org(org.id),
            store.create_api_key(org.id, name="late", key_hash=f"late{round_}", prefix="p"),
            return_exceptions=True)
        assert isinstance(deleted, Conflict) != isinstance(created, NotFound), (deleted, created)
        claims = await asyncio.gather(
            *(store.replace_owned(owner, [("org", org.id, "x")]) for owner in ("team-a", "team-b")),
            return_exceptions=True)
        assert sorted(type(c).__name__ for c in claims) == ["Conflict", "OwnershipChange"], claims


# API: ownership and apply records ------------------------------------------------------


async def test_ownership_api_put_get_replace_adopt(gw):
    acme = (await gw.admin.get("/admin/v1/organizations/acme")).json()
    key = await gw.create_key("acme", name="web")
    objects = [{"kind": "org", "object_id": acme["id"], "name": "acme"},
               {"kind": "api_key", "object_id": key["id"], "name": "acme/web"}]
    r = await gw.admin.put("/admin/v1/config/ownership", json={"owner": "team-a", "objects": objects})
    assert r.status_code == 200, r.text
    assert (r.json()["added"], r.json()["removed"]) == (2, 0)
    r = await gw.admin.get("/admin/v1/config/ownership", params={"owner": "team-a"})
    assert [(o["kind"], o["object_id"], o["name"], o["owner"]) for o in r.json()] == [
        ("api_key", key["id"], "acme/web", "team-a"), ("org", acme["id"], "acme", "team-a")]
    assert set(r.json()[0]) == {"kind", "object_id", "name", "owner", "updated_at"}
    r = await gw.admin.get("/admin/v1/config/ownership", params={"owner": "team-a", "kind": "org"})
    assert [o["kind"] for o in r.json()] == ["org"]

    r = await gw.admin.put("/admin/v1/config/ownership", json={"owner": "team-a", "objects": objects})
    assert (r.json()["added"], r.json()["renamed"], r.json()["removed"]) == (0, 0, 0)
    assert len(await audit(gw, "config.ownership")) == 1  # an unchanged set is no mutation

    r = await gw.admin.put("/admin/v1/config/ownership", json={"owner": "team-b", "objects": objects[:1]})
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "owned_by_another_config" and "org 'acme'" in error["message"] \
        and "'team-a'" in error["message"]
    r = await gw.admin.put("/admin/v1/config/ownership",
                           json={"owner": "team-b", "objects": objects[:1], "adopt": True})
    assert r.status_code == 200 and [o["owner"] for o in r.json()["adopted"]] == ["team-a"]
    owners = {o["object_id"]: o["owner"] for o in (await gw.admin.get("/admin/v1/config/ownership")).json()}
    assert owners == {acme["id"]: "team-b", key["id"]: "team-a"}
    entries = await audit(gw, "config.ownership")
    assert len(entries) == 2 and entries[0]["target"] == "team-b"
    assert after_of(entries[0]) == {"objects": 1, "added": 1, "renamed": 0, "removed": 0, "adopted": 1,
                                    "adopted_from": ["team-a"]}


async def test_applied_record_appears_in_the_audit_log(gw):
    body = {"owner": "fleet", "dry_run": False, "summary": {"added": 3, "changed": 1, "removed": 0},
            "source": {"repo": "https://ci:ghp_secret@git.example.com/ops/fleet.git", "branch": "main",
                       "commit": "0123456789ABCDEF0123456789abcdef01234567"}}
    r = await gw.admin.post("/admin/v1/config/applied", json=body)
    assert r.status_code == 201, r.text
    recorded = {**body, "source": {"repo": "https://git.example.com/ops/fleet.git", "branch": "main",
                                   "commit": "0123456789abcdef0123456789abcdef01234567"}}
    assert r.json() == recorded
    r = await gw.admin.post("/admin/v1/config/applied",
                            json={"owner": "fleet", "source": None, "summary": {"added": 0, "changed": 0,
                                                                                "removed": 0}})
    assert r.status_code == 201 and r.json()["dry_run"] is False
    entries = await audit(gw, "config.apply")
    assert [e["target"] for e in entries] == ["fleet", "fleet"]
    assert after_of(entries[1]) == recorded
    r = await gw.admin.get("/admin/v1/audit", params={"limit": 1000})
    assert "ghp_secret" not in r.text


# API: the CRUD apply and prune need ---------------------------------------------------


async def test_key_patch_takes_effect_on_the_data_plane(gw):
    async with sim_pod("m") as pod:
        await gw.register("m", pod)
        key = await gw.create_key("acme", name="web")
        assert (await chat(gw, key["key"])).status_code == 200

        r = await gw.admin.patch(f"/admin/v1/api-keys/{key['id']}", json={"models": ["other"]})
        assert r.status_code == 200 and r.json()["allowed_models"] == ["other"], r.text
        assert (await chat(gw, key["key"])).status_code == 403

        expiry = (datetime.now(UTC) + timedelta(days=7)).replace(microsecond=0)
        r = await gw.admin.patch(f"/admin/v1/api-keys/{key['id']}",
                                 json={"models": [], "rpm_limit": 1, "name": "web-2",
                                       "expires_at": expiry.isoformat().replace("+00:00", "Z")})
        assert r.status_code == 200, r.text
        assert (r.json()["name"], r.json()["rpm_limit"], r.json()["allowed_models"]) == ("web-2", 1, [])
        assert datetime.fromisoformat(r.json()["expires_at"]) == expiry
        statuses = [(await chat(gw, key["key"])).status_code for _ in range(2)]
        assert statuses[-1] == 429, statuses

        r = await gw.admin.patch(f"/admin/v1/api-keys/{key['id']}", json={"rpm_limit": None, "expires_at": None})
        assert (r.json()["rpm_limit"], r.json()["expires_at"]) == (None, None)
        assert (await chat(gw, key["key"])).status_code == 200

    entries = await audit(gw, "key.update")
    assert len(entries) == 3 and after_of(entries[0])["rpm_limit"] is None
    await gw.admin.post(f"/admin/v1/api-keys/{key['id']}/revoke")
    r = await gw.admin.patch(f"/admin/v1/api-keys/{key['id']}", json={"rpm_limit": 5})
    assert r.status_code == 409 and r.json()["error"]["code"] == "key_revoked", r.text


async def test_deleted_budget_is_no_longer_enforced(gw):
    async with sim_pod("m") as pod:
        await gw.register("m", pod, input_price=1.0, output_price=1.0)
        key = await gw.create_key("acme")
        r = await gw.admin.put("/admin/v1/budgets", json={"org": "acme", "usd": 0, "period": "daily"})
        budget = r.json()
        r = await chat(gw, key["key"])
        assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota", r.text

        r = await gw.admin.delete(f"/admin/v1/budgets/{budget['id']}")
        assert r.status_code == 200 and r.json()["deleted"] == budget["id"], r.text
        assert (await chat(gw, key["key"])).status_code == 200
    assert (await gw.admin.get("/admin/v1/budgets", params={"org": "acme"})).json() == []
    assert (await gw.admin.delete(f"/admin/v1/budgets/{budget['id']}")).status_code == 404
    [entry] = await audit(gw, "budget.delete")
    assert entry["target"] == budget["id"]


async def test_org_delete_refused_while_it_holds_keys_or_budgets(gw):
    key = await gw.create_key("acme")
    budget = (await gw.admin.put("/admin/v1/budgets", json={"org": "acme", "usd": 5, "period": "daily"})).json()
    r = await gw.admin.delete("/admin/v1/organizations/acme")
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "org_not_empty" and "1 active API key(s), 1 budget(s)" in error["message"]

    await gw.admin.post(f"/admin/v1/api-keys/{key['id']}/revoke")
    await gw.admin.delete(f"/admin/v1/budgets/{budget['id']}")
    r = await gw.admin.delete("/admin/v1/organizations/acme")
    assert r.status_code == 200 and r.json()["name"] == "acme", r.text
    assert (await gw.admin.get("/admin/v1/organizations/acme")).status_code == 404
    assert (await chat(gw, key["key"])).status_code == 401
    [entry] = await audit(gw, "org.delete")
    assert entry["target"] == r.json()["deleted"]


# bad input, one case per rule ----------------------------------------------------------

OWNERSHIP = "/admin/v1/config/ownership"
APPLIED = "/admin/v1/config/applied"
SUMMARY = {"added": 0, "changed": 0, "removed": 0}
SOURCE = {"repo": "/srv/fleet", "branch": "main", "commit": "abcd"}
ORG_OBJECT = {"kind": "org", "object_id": "org_0123456789abcdef", "name": "acme"}

BAD_REQUESTS = [
    ("get", OWNERSHIP + "?kind=orgs", None, 400, "kind", "'kind' must be one of"),
    ("get", OWNERSHIP + "?owner=no%20spaces", None, 400, "owner", "'owner' must be 1-64"),
    ("put", OWNERSHIP, {"objects": []}, 400, "owner", "'owner' is required"),
    ("put", OWNERSHIP, {"owner": "a", "objects": {}}, 400, "objects", "'objects' must be a list"),
    ("put", OWNERSHIP, {"owner": "a"}, 400, "objects", "'objects' must be a list"),
    ("put", OWNERSHIP, {"owner": "a", "objects": [], "extra": 1}, 400, "extra", "Unknown field 'extra'"),
    ("put", OWNERSHIP, {"owner": "a", "objects": [], "adopt": "yes"}, 400, "adopt", "'adopt' must be of type bool"),
    ("put", OWNERSHIP, {"owner": "a", "objects": [5]}, 400, "objects[0]", "'objects[0]' must be an object"),
    ("put", OWNERSHIP, {"owner": "a", "objects": [{**ORG_OBJECT, "x": 1}]}, 400, "objects[0].x", "Unknown field"),
    ("put", OWNERSHIP, {"owner": "a", "objects": [{**ORG_OBJECT, "kind": "team"}]}, 400, "objects[0].kind",
     "must be one of"),
    ("put", OWNERSHIP, {"owner": "a", "objects": [{**ORG_OBJECT, "object_id": "key_1"}]}, 400,
     "objects[0].object_id", "is not the id of a org"),
    ("put", OWNERSHIP, {"owner": "a", "objects": [{**ORG_OBJECT, "name": "a\nb"}]}, 400, "objects[0].name",
     "control characters"),
    ("put", OWNERSHIP, {"owner": "a", "objects": [ORG_OBJECT, ORG_OBJECT]}, 400, "objects[1].object_id", "repeats"),
    ("put", OWNERSHIP, {"owner": "a", "objects": [ORG_OBJECT] * 10_001}, 400, "objects", "at most 10000"),
    ("post", APPLIED, {"summary": SUMMARY}, 400, "owner", "'owner' is required"),
    ("post", APPLIED, {"owner": "a"}, 400, "summary", "'summary' is required"),
    ("post", APPLIED, {"owner": "a", "summary": {"added": 1}}, 400, "summary.changed", "is required"),
    ("post", APPLIED, {"owner": "a", "summary": {**SUMMARY, "added": -1}}, 400, "summary.added", ">= 0"),
    ("post", APPLIED, {"owner": "a", "summary": {**SUMMARY, "moved": 1}}, 400, "summary.moved", "Unknown field"),
    ("post", APPLIED, {"owner": "a", "summary": SUMMARY, "dry_run": 1}, 400, "dry_run", "of type bool"),
    ("post", APPLIED, {"owner": "a", "summary": SUMMARY, "source": "git"}, 400, "source", "must be an object"),
    ("post", APPLIED, {"owner": "a", "summary": SUMMARY, "source": {**SOURCE, "commit": "xyz1"}}, 400,
     "source.commit", "4 to 64 hex"),
    ("post", APPLIED, {"owner": "a", "summary": SUMMARY, "source": {**SOURCE, "commit": "a" * 65}}, 400,
     "source.commit", "4 to 64 hex"),
    ("post", APPLIED, {"owner": "a", "summary": SUMMARY, "source": {**SOURCE, "branch": None}}, 400,
     "source.branch", "is required"),
    ("post", APPLIED, {"owner": "a", "summary": SUMMARY, "source": {**SOURCE, "repo": "r" * 513}}, 400,
     "source.repo", "at most 512"),
    ("post", APPLIED, {"owner": "a", "summary": SUMMARY, "source": {**SOURCE, "branch": "a\u2028b"}}, 400,
     "source.branch", "printable"),
    ("patch", "/admin/v1/api-keys/key_nope", {"rpm_limit": 5}, 404, "key_id", "not found"),
    ("patch", "/admin/v1/api-keys/{key}", {}, 400, None, "Nothing to change"),
    ("patch", "/admin/v1/api-keys/{key}", {"org": "acme"}, 400, "org", "Unknown field 'org'"),
    ("patch", "/admin/v1/api-keys/{key}", {"rpm_limit": 0}, 400, "rpm_limit", ">= 1"),
    ("patch", "/admin/v1/api-keys/{key}", {"models": None}, 400, "models", "must be a list"),
    ("patch", "/admin/v1/api-keys/{key}", {"models": "m"}, 400, "models", "must be a list"),
    ("patch", "/admin/v1/api-keys/{key}", {"name": None}, 400, "name", "'name' is required"),
    ("patch", "/admin/v1/api-keys/{key}", {"name": "a b"}, 400, "name", "'name' must be 1-64"),
    ("patch", "/admin/v1/api-keys/{key}", {"environment": ""}, 400, "environment", "must not be empty"),
    ("patch", "/admin/v1/api-keys/{key}", {"expires_at": "2030-01-01T00:00:00"}, 400, "expires_at", "timezone"),
    ("patch", "/admin/v1/api-keys/{key}", {"expires_at": "soon"}, 400, "expires_at", "ISO 8601"),
    ("patch", "/admin/v1/api-keys/{key}", {"expires_at": "9999-12-31T23:59:59-05:00"}, 400, "expires_at",
     "ISO 8601"),
    ("delete", "/admin/v1/budgets/bud_nope", None, 404, "budget_id", "not found"),
    ("delete", "/admin/v1/organizations/nope", None, 404, "org", "not found"),
]


async def test_bad_input_names_the_field(gw):
    """Every route refuses bad input with the OpenAI error shape and the offending `param` (one gateway for all)."""
    key_id = (await gw.create_key("acme"))["id"]
    wrong = []
    for method, path, body, status, param, message in BAD_REQUESTS:
        r = await gw.admin.request(method.upper(), path.replace("{key}", key_id),
                                   **({"json": body} if body is not None else {}))
        error = r.json().get("error") or {}
        if r.status_code != status or message not in error.get("message", "") or error.get("param") != param:
            wrong.append(f"{method} {path} {str(body)[:60]}: {r.status_code} {error}")
    assert not wrong, "\n".join(wrong)
