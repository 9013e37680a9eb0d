"""Users, personal admin tokens and service accounts: the store on both backends, the admin API on a real gateway.

What matters: secrets are shown once and stored hashed, a revoked/expired token or a disabled user is refused
at once with a clear 401, and an org admin can neither see nor touch another org's (or a global) user.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from gateway.errors import Conflict, InvalidRequest, NotFound
from tests.fleet import gateway_settings, running_gateway
from tests.support import eventually


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create(gw, path: str, body: dict) -> dict:
    r = await gw.admin.post(path, json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def user_with_token(gw, name: str, role: str, org: str | None = None) -> tuple[dict, str]:
    user = await create(gw, "/admin/v1/users", {"name": name, "role": role} | ({"org": org} if org else {}))
    return user, (await create(gw, f"/admin/v1/users/{user['id']}/tokens", {}))["token"]


# store ---------------------------------------------------------------------------------------

async def test_identity_store(store):
    org = await store.create_org("acme")
    alice = await store.create_user("alice", role="operator", org_id="acme", email="a@example.com")
    assert (alice.org_id, alice.status, alice.email) == (org.id, "active", "a@example.com")
    with pytest.raises(Conflict, match="user 'alice' already exists"):
        await store.create_user("alice", role="viewer")
    with pytest.raises(NotFound, match="organization 'nope' not found"):
        await store.create_user("bob", role="viewer", org_id="nope")
    with pytest.raises(InvalidRequest, match="role must be one of"):
        await store.create_user("bob", role="root")
    await store.create_user("root", role="admin")
    assert [u.name for u in await store.list_users()] == ["alice", "root"]
    assert [u.name for u in await store.list_users("acme")] == ["alice"]
    assert (await store.get_user("alice")).id == alice.id and (await store.get_user(alice.id)).name == "alice"
    changed = await store.update_user("alice", role="admin", status="disabled", email="")
    assert (changed.role, changed.status, changed.email) == ("admin", "disabled", None)
    with pytest.raises(NotFound, match="user 'nobody' not found"):
        await store.get_user("nobody")

    expires = datetime.now(UTC) + timedelta(days=1)
    token = await store.create_admin_token(alice.id, name="laptop", token_hash="h1", prefix="fgp_abcdefgh",
                                           expires_at=expires)
    assert await store.find_admin_token_by_hash("h1") == token and await store.find_admin_token_by_hash("h2") is None
    with pytest.raises(Conflict):
        await store.create_admin_token(alice.id, name="again", token_hash="h1", prefix="p", expires_at=expires)
    with pytest.raises(NotFound, match="user 'usr_missing' not found"):
        await store.create_admin_token("usr_missing", name="x", token_hash="h3", prefix="p", expires_at=expires)
    revoked = await store.revoke_admin_token(token.id)
    assert revoked.revoked_at is not None and revoked.status(datetime.now(UTC)) == "revoked"
    assert (await store.revoke_admin_token(token.id)).revoked_at == revoked.revoked_at  # the first time is kept
    used = datetime.now(UTC)
    await store.touch_admin_token(token.id, used)
    assert [t.last_used_at for t in await store.list_admin_tokens(alice.id)] == [used]
    assert "token_hash" not in token.to_dict()

    ci = await store.create_service_account("ci", role="operator", client_id="fgc_1", secret_hash="s1", org_id=org.id)
    with pytest.raises(Conflict, match="service account 'ci' already exists"):
        await store.create_service_account("ci", role="viewer", client_id="fgc_2", secret_hash="s2")
    with pytest.raises(Conflict):
        await store.create_service_account("ci2", role="viewer", client_id="fgc_1", secret_hash="s2")
    assert (await store.find_service_account_by_client_id("fgc_1")).id == ci.id
    assert await store.find_service_account_by_client_id("fgc_9") is None
    rotated = await store.set_service_account_secret("ci", "s2")
    assert rotated.secret_hash == "s2" and rotated.secret_rotated_at > ci.secret_rotated_at
    assert (await store.update_service_account(ci.id, status="disabled", role="admin")).status == "disabled"
    assert [a.name for a in await store.list_service_accounts("acme")] == ["ci"]
    assert "secret_hash" not in ci.to_dict()
    with pytest.raises(NotFound, match="service account 'nope' not found"):
        await store.update_service_account("nope", role="viewer")

    first = await store.add_signing_key("jwk_1", algorithm="EdDSA", private_pem="pem 1", public_jwk={"kid": "jwk_1"})
    # Another replica racing to create the first key gets the one that won: one current key only.
    assert (await store.add_signing_key("jwk_2", algorithm="EdDSA", private_pem="pem 2",
                                        public_jwk={"kid": "jwk_2"})).kid == first.kid
    await store.rotate_signing_key("jwk_3", algorithm="EdDSA", private_pem="pem 3", public_jwk={"kid": "jwk_3"})
    keys = await store.list_signing_keys()
    assert [(k.kid, k.retired_at is None) for k in keys] == [("jwk_3", True), ("jwk_1", False)]
    assert "private_pem" not in keys[0].to_dict()


# users -----------------------------------------------------------------------------------------

async def test_users_crud_and_audit(tmp_path):
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        acme = await gw.create_org("acme")
        root = await create(gw, "/admin/v1/users", {"name": "root", "role": "admin"})
        alice = await create(gw, "/admin/v1/users", {"name": "alice", "role": "viewer", "org": "acme",
                                                     "email": "alice@example.com"})
        assert (root["org_id"], alice["org_id"], alice["status"]) == (None, acme["id"], "active")
        assert [u["name"] for u in (await gw.admin.get("/admin/v1/users")).json()] == ["alice", "root"]
        assert [u["name"] for u in (await gw.admin.get("/admin/v1/users", params={"org": "acme"})).json()] == ["alice"]
        assert (await gw.admin.get("/admin/v1/users/alice")).json()["id"] == alice["id"]
        r = await gw.admin.patch(f"/admin/v1/users/{alice['id']}", json={"role": "operator", "email": None})
        assert r.status_code == 200 and (r.json()["role"], r.json()["email"]) == ("operator", None), r.text
        r = await gw.admin.patch("/admin/v1/users/alice", json={"role": "operator"})  # no change: not audited
        assert r.status_code == 200
        audit = (await gw.admin.get("/admin/v1/audit")).json()
        updates = [e for e in audit if e["action"] == "user.update"]
        assert len(updates) == 1 and updates[0]["target"] == alice["id"]
        assert updates[0]["before"]["role"] == "viewer" and updates[0]["after"]["role"] == "operator"
        assert [e["action"] for e in audit].count("user.create") == 2


@pytest.mark.parametrize("method, path, body, status, param", [
    ("POST", "/admin/v1/users", {}, 400, "name"),
    ("POST", "/admin/v1/users", {"name": "bad name!", "role": "viewer"}, 400, "name"),
    ("POST", "/admin/v1/users", {"name": "bob", "role": "root"}, 400, "role"),
    ("POST", "/admin/v1/users", {"name": "bob"}, 400, "role"),
    ("POST", "/admin/v1/users", {"name": "bob", "role": "viewer", "org": "nope"}, 404, "org"),
    ("POST", "/admin/v1/users", {"name": "bob", "role": "viewer", "email": "not-an-email"}, 400, "email"),
    ("POST", "/admin/v1/users", {"name": "bob", "role": "viewer", "password": "x"}, 400, "password"),
    ("POST", "/admin/v1/users", {"name": 5, "role": "viewer"}, 400, "name"),
    ("POST", "/admin/v1/users", {"name": "alice", "role": "viewer"}, 409, "name"),
    ("GET", "/admin/v1/users/nobody", None, 404, "user"),
    ("GET", "/admin/v1/users?org=nope", None, 404, "org"),
    ("PATCH", "/admin/v1/users/alice", {"status": "gone"}, 400, "status"),
    ("PATCH", "/admin/v1/users/alice", {"role": 3}, 400, "role"),
    ("PATCH", "/admin/v1/users/alice", {"name": "renamed"}, 400, "name"),
    ("PATCH", "/admin/v1/users/nobody", {"role": "viewer"}, 404, "user"),
    ("POST", "/admin/v1/users/alice/tokens", {"expires_in": "366d"}, 400, "expires_in"),
    ("POST", "/admin/v1/users/alice/tokens", {"expires_in": "soon"}, 400, "expires_in"),
    ("POST", "/admin/v1/users/alice/tokens", {"name": "bad name!"}, 400, "name"),
    ("POST", "/admin/v1/users/alice/tokens", {"token": "fgp_mine"}, 400, "token"),
    ("POST", "/admin/v1/users/nobody/tokens", {}, 404, "user"),
    ("DELETE", "/admin/v1/users/alice/tokens/tok_0000000000000000", None, 404, "token_id"),
    ("POST", "/admin/v1/service-accounts", {"name": "ci2"}, 400, "role"),
    ("POST", "/admin/v1/service-accounts", {"name": "ci2", "role": "viewer", "client_id": "mine"}, 400, "client_id"),
    ("POST", "/admin/v1/service-accounts", {"name": "ci", "role": "viewer"}, 409, "name"),
    ("PATCH", "/admin/v1/service-accounts/ci", {"status": "paused"}, 400, "status"),
    ("PATCH", "/admin/v1/service-accounts/ci", {"org": "acme"}, 400, "org"),
    ("GET", "/admin/v1/service-accounts/nope", None, 404, "service_account"),
    ("POST", "/admin/v1/service-accounts/ci/secret", {"client_secret": "mine"}, 400, "client_secret"),
    ("POST", "/admin/v1/oauth2/keys/rotate", {"kid": "mine"}, 400, "kid"),
])
async def test_bad_identity_input(tmp_path, method, path, body, status, param):
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        await gw.create_org("acme")
        await create(gw, "/admin/v1/users", {"name": "alice", "role": "viewer", "org": "acme"})
        await create(gw, "/admin/v1/service-accounts", {"name": "ci", "role": "viewer"})
        r = await gw.admin.request(method, path, **({"json": body} if body is not None else {}))
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error", error


# personal tokens -------------------------------------------------------------------------------

async def test_personal_tokens_lifecycle(tmp_path):
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        await gw.create_org("acme")
        alice, token = await user_with_token(gw, "alice", "viewer", org="acme")
        bob, _ = await user_with_token(gw, "bob", "viewer", org="acme")
        assert token.startswith("fgp_") and len(token) > 40
        me = (await gw.admin.get("/admin/v1/whoami", headers=bearer(token))).json()
        assert (me["kind"], me["name"], me["role"], me["actor"]) == ("user", "alice", "viewer", "user:alice")

        # Self-service: a viewer makes, lists and revokes its own tokens, never another user's.
        r = await gw.admin.post("/admin/v1/users/alice/tokens", json={"name": "ci", "expires_in": "2h"},
                                headers=bearer(token))
        assert r.status_code == 201, r.text
        second = r.json()
        assert second["status"] == "active"
        assert datetime.fromisoformat(second["expires_at"]) - datetime.now(UTC) < timedelta(hours=2, seconds=5)
        listed = (await gw.admin.get("/admin/v1/users/alice/tokens", headers=bearer(token))).json()
        assert [t["name"] for t in listed] == ["default", "ci"]
        assert all("token" not in t and "token_hash" not in t for t in listed)
        assert listed[0]["last_used_at"] is not None  # alice's first token was just used
        for method, path in (("POST", f"/admin/v1/users/{bob['id']}/tokens"), ("GET", "/admin/v1/users/bob/tokens")):
            body = {"json": {}} if method == "POST" else {}
            r = await gw.admin.request(method, path, headers=bearer(token), **body)
            assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_role", r.text

        r = await gw.admin.delete(f"/admin/v1/users/alice/tokens/{second['id']}", headers=bearer(token))
        assert r.status_code == 200 and r.json()["status"] == "revoked", r.text
        r = await gw.admin.get("/admin/v1/whoami", headers=bearer(second["token"]))
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
        assert second["token"] not in r.text
        r = await gw.admin.delete(f"/admin/v1/users/bob/tokens/{second['id']}")  # not bob's token
        assert r.status_code == 404

        short = await create(gw, "/admin/v1/users/alice/tokens", {"expires_in": "1s"})

        async def refused():
            r = await gw.admin.get("/admin/v1/whoami", headers=bearer(short["token"]))
            return r if r.status_code == 401 else None

        r = await eventually(refused, timeout=10, what="the short token to expire")
        assert "expired" in r.json()["error"]["message"]

        assert (await gw.admin.patch("/admin/v1/users/alice", json={"status": "disabled"})).status_code == 200
        r = await gw.admin.get("/admin/v1/whoami", headers=bearer(token))
        assert r.status_code == 401 and r.json()["error"]["message"] == "User 'alice' is disabled."
        r = await gw.admin.post("/admin/v1/users/alice/tokens", json={})
        assert r.status_code == 409 and "disabled" in r.json()["error"]["message"]
        assert (await gw.admin.patch("/admin/v1/users/alice", json={"status": "active"})).status_code == 200
        assert (await gw.admin.get("/admin/v1/whoami", headers=bearer(token))).status_code == 200

        r = await gw.admin.get("/admin/v1/whoami", headers=bearer("fgp_" + "x" * 43))
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_admin_token"
        audit = json.dumps((await gw.admin.get("/admin/v1/audit")).json())
        assert token not in audit and second["token"] not in audit and "fgp_" not in audit.replace('"fgp_', "")
        actions = [e["action"] for e in json.loads(audit)]
        assert actions.count("user.token.revoke") == 1 and actions.count("user.token.create") == 4


async def test_org_admin_stays_in_its_org(tmp_path):
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        acme = await gw.create_org("acme")
        await gw.create_org("other")
        root = await create(gw, "/admin/v1/users", {"name": "root", "role": "admin"})
        outsider = await create(gw, "/admin/v1/users", {"name": "outsider", "role": "viewer", "org": "other"})
        _, token = await user_with_token(gw, "acme-admin", "admin", org="acme")
        async with httpx.AsyncClient(base_url=gw.url, headers=bearer(token), timeout=30) as admin:
            r = await admin.post("/admin/v1/users", json={"name": "carol", "role": "operator"})
            assert r.status_code == 201 and r.json()["org_id"] == acme["id"], r.text  # its own org by default
            assert (await admin.post(f"/admin/v1/users/{r.json()['id']}/tokens", json={})).status_code == 201
            r = await admin.post("/admin/v1/users", json={"name": "dave", "role": "admin", "org": "other"})
            assert r.status_code == 403 and r.json()["error"]["code"] == "org_scope_denied"
            for user in (root, outsider):  # a global user and another org's: neither seen nor changed
                for method, path, body in (("GET", f"/admin/v1/users/{user['id']}", None),
                                           ("PATCH", f"/admin/v1/users/{user['id']}", {"status": "disabled"}),
                                           ("POST", f"/admin/v1/users/{user['id']}/tokens", {}),
                                           ("GET", f"/admin/v1/users/{user['id']}/tokens", None)):
                    r = await admin.request(method, path, **({"json": body} if body is not None else {}))
                    assert r.status_code == 403, (method, path, r.text)
            assert {u["name"] for u in (await admin.get("/admin/v1/users")).json()} == {"acme-admin", "carol"}
            assert (await admin.get("/admin/v1/users", params={"org": "other"})).status_code == 403
            r = await admin.post("/admin/v1/service-accounts", json={"name": "acme-ci", "role": "operator"})
            assert r.status_code == 201 and r.json()["org_id"] == acme["id"]
            r = await admin.post("/admin/v1/service-accounts", json={"name": "global-ci", "role": "admin",
                                                                     "org": "other"})
            assert r.status_code == 403
            assert (await admin.post("/admin/v1/oauth2/keys/rotate", json={})).status_code == 403
        assert (await gw.admin.get("/admin/v1/users/root")).json()["status"] == "active"


# service accounts ------------------------------------------------------------------------------

async def test_service_accounts_crud(tmp_path):
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        created = await create(gw, "/admin/v1/service-accounts", {"name": "ci", "role": "operator"})
        assert created["client_id"].startswith("fgc_") and created["client_secret"].startswith("fgs_")
        shown = (await gw.admin.get("/admin/v1/service-accounts/ci")).json()
        listed = (await gw.admin.get("/admin/v1/service-accounts")).json()
        for record in (shown, *listed):
            assert "client_secret" not in record and "secret_hash" not in record
        assert shown["client_id"] == created["client_id"] and [a["name"] for a in listed] == ["ci"]
        r = await gw.admin.patch("/admin/v1/service-accounts/ci", json={"role": "viewer", "status": "disabled"})
        assert (r.json()["role"], r.json()["status"]) == ("viewer", "disabled")
        r = await gw.admin.post(f"/admin/v1/service-accounts/{created['id']}/secret")
        assert r.status_code == 200, r.text
        rotated = r.json()
        assert rotated["client_secret"].startswith("fgs_") and rotated["client_secret"] != created["client_secret"]
        assert rotated["client_id"] == created["client_id"]
        audit = json.dumps((await gw.admin.get("/admin/v1/audit")).json())
        assert created["client_secret"] not in audit and rotated["client_secret"] not in audit
        assert "secret_hash" not in audit
        actions = [e["action"] for e in json.loads(audit)]
        assert actions == ["service_account.rotate_secret", "service_account.update", "service_account.create"]
