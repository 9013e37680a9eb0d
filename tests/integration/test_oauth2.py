"""OAuth2 client credentials on a real gateway: issue, use, expiry, audience, key rotation, JWKS, RFC 6749 errors.

Tokens are checked where they are used (the admin API) and, for the JWKS, with PyJWT itself, as any
OAuth2 resource server would. Short lifetimes (2 s, no leeway) keep the expiry cases fast.
"""

from __future__ import annotations

import base64
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from gateway import appkeys
from gateway.errors import AuthenticationFailed
from tests.fleet import gateway_settings, running_gateway
from tests.support import eventually

FORM = "application/x-www-form-urlencoded"
SHORT = {"oauth_token_ttl_s": 2, "oauth_leeway_s": 0.0}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def service_account(gw, name: str = "ci", role: str = "operator", **extra) -> dict:
    r = await gw.admin.post("/admin/v1/service-accounts", json={"name": name, "role": role, **extra})
    assert r.status_code == 201, r.text
    return r.json()


async def access_token(url: str, account: dict, **form) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        r = await client.post("/oauth2/token", data={"grant_type": "client_credentials", **form},
                              auth=(account["client_id"], account["client_secret"]))
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


async def whoami(gw, token: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
        return await client.get("/admin/v1/whoami", headers=bearer(token))


async def test_issue_and_use_an_access_token(tmp_path):
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        account = await service_account(gw)
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            r = await client.post("/oauth2/token", data={"grant_type": "client_credentials"},
                                  auth=(account["client_id"], account["client_secret"]))
            assert r.status_code == 200, r.text
            assert set(r.json()) == {"access_token", "token_type", "expires_in"}
            assert (r.json()["token_type"], r.json()["expires_in"]) == ("Bearer", 900)
            assert r.headers["Cache-Control"] == "no-store"
            token = r.json()["access_token"]
            r = await client.post("/oauth2/token", data={  # client authentication in the body works too
                "grant_type": "client_credentials", "client_id": account["client_id"],
                "client_secret": account["client_secret"], "audience": "fleetgate-admin"})
            assert r.status_code == 200, r.text
            me = (await client.get("/admin/v1/whoami", headers=bearer(token))).json()
            assert (me["kind"], me["name"], me["role"], me["org_id"]) == ("service_account", "ci", "operator", None)

            header, claims = jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})
            assert header["alg"] == "EdDSA" and header["kid"].startswith("jwk_")
            assert (claims["iss"], claims["aud"], claims["sub"], claims["role"]) == (
                "fleetgate", "fleetgate-admin", account["id"], "operator")
            assert claims["exp"] - claims["iat"] == 900 and claims["nbf"] == claims["iat"] and claims["jti"]

            # Any resource server verifies it from the published JWKS alone.
            jwks = jwt.PyJWKSet.from_dict((await client.get("/oauth2/jwks.json")).json())
            verified = jwt.decode(token, jwks[header["kid"]].key, algorithms=["EdDSA"], audience="fleetgate-admin",
                                  issuer="fleetgate")
            assert verified["sub"] == account["id"]

            # The role is read from the account on every request: a change applies to the token at once.
            r = await client.post("/admin/v1/organizations", json={"name": "acme"}, headers=bearer(token))
            assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_role"
            await gw.admin.patch("/admin/v1/service-accounts/ci", json={"role": "admin"})
            r = await client.post("/admin/v1/organizations", json={"name": "acme"}, headers=bearer(token))
            assert r.status_code == 201, r.text
            assert (await gw.admin.get("/admin/v1/audit")).json()[0]["actor"] == "service_account:ci"

            # Rotating the secret refuses the old secret and every token issued for it, at once.
            rotated = (await gw.admin.post("/admin/v1/service-accounts/ci/secret")).json()
            r = await client.post("/oauth2/token", data={"grant_type": "client_credentials"},
                                  auth=(account["client_id"], account["client_secret"]))
            assert r.status_code == 401 and r.json()["error"] == "invalid_client"
            r = await client.get("/admin/v1/whoami", headers=bearer(token))
            assert r.status_code == 401 and "secret was rotated" in r.json()["error"]["message"]
            fresh = await access_token(gw.url, rotated)
            assert (await client.get("/admin/v1/whoami", headers=bearer(fresh))).status_code == 200

            # Disabling the account refuses its tokens and its secret at once.
            await gw.admin.patch("/admin/v1/service-accounts/ci", json={"status": "disabled"})
            r = await client.get("/admin/v1/whoami", headers=bearer(fresh))
            assert r.status_code == 401 and r.json()["error"]["message"] == "Service account 'ci' is disabled."
            r = await client.post("/oauth2/token", data={"grant_type": "client_credentials"},
                                  auth=(rotated["client_id"], rotated["client_secret"]))
            assert r.status_code == 401 and "disabled" in r.json()["error_description"]


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


async def test_token_endpoint_errors_are_rfc6749_shaped(tmp_path):
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        account = await service_account(gw)
        cid, secret = account["client_id"], account["client_secret"]
        grant = "grant_type=client_credentials"
        cases = [  # (headers, body, status, error)
            (_basic(cid, "fgs_wrong"), grant, 401, "invalid_client"),
            (_basic("fgc_000000000000000000000000", secret), grant, 401, "invalid_client"),
            (_basic("x" * 300 + "\x00", secret), grant, 401, "invalid_client"),
            ({}, grant, 401, "invalid_client"),
            ({}, grant + f"&client_id={cid}", 401, "invalid_client"),
            ({"Authorization": "Basic !!!"}, grant, 401, "invalid_client"),
            ({"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}, grant, 401, "invalid_client"),
            ({"Authorization": f"Bearer {secret}"}, grant, 401, "invalid_client"),
            (_basic(cid, secret), "", 400, "invalid_request"),
            (_basic(cid, secret), "grant_type=password", 400, "unsupported_grant_type"),
            (_basic(cid, secret), grant + "&grant_type=client_credentials", 400, "invalid_request"),
            (_basic(cid, secret), grant + f"&client_secret={secret}", 400, "invalid_request"),
            (_basic(cid, secret), grant + "&client_id=fgc_111111111111111111111111", 400, "invalid_request"),
            (_basic(cid, secret), grant + "&audience=another-fleet", 400, "invalid_target"),
            (_basic(cid, secret), grant + "&scope=admin", 400, "invalid_scope"),
            (_basic(cid, secret), b"grant_type=\xff\xfe", 400, "invalid_request"),
            (_basic(cid, secret), "&".join(f"p{i}=1" for i in range(40)), 400, "invalid_request"),
            (_basic(cid, secret), grant + "&pad=" + "x" * 9000, 400, "invalid_request"),
        ]
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            for headers, body, status, error in cases:
                r = await client.post("/oauth2/token", content=body, headers={"Content-Type": FORM, **headers})
                assert (r.status_code, r.json().get("error")) == (status, error), (headers, body, r.text)
                assert set(r.json()) == {"error", "error_description"} and r.headers["Cache-Control"] == "no-store"
                assert secret not in r.text
                if status == 401:
                    assert r.headers["WWW-Authenticate"] == 'Basic realm="fleetgate"'
            r = await client.post("/oauth2/token", json={"grant_type": "client_credentials"},
                                  headers=_basic(cid, secret))
            assert (r.status_code, r.json()["error"]) == (400, "invalid_request")
            assert (await client.get("/oauth2/token")).status_code == 405


@pytest.mark.parametrize("token, reason", [
    ("a.b.c", "malformed"),
    ("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "names no signing key"),
    (jwt.encode({"sub": "x"}, "k" * 32, algorithm="HS256", headers={"kid": "jwk_unknown"}), "unknown key"),
    ("e\udcff.x.y", "malformed"),
])
async def test_forged_tokens_are_refused(tmp_path, token, reason):
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        auth = gw.app[appkeys.ADMIN_AUTH]  # straight to the authenticator: httpx cannot send lone surrogates
        with pytest.raises(AuthenticationFailed) as info:
            await auth.authenticate(f"Bearer {token}")
        assert reason in info.value.message and token not in info.value.message
        assert info.value.code == "invalid_admin_token"


async def test_access_token_expires(tmp_path):
    async with running_gateway(gateway_settings(tmp_path, **SHORT)) as gw:
        token = await access_token(gw.url, await service_account(gw))
        assert (await whoami(gw, token)).status_code == 200

        async def refused():
            r = await whoami(gw, token)
            return r if r.status_code == 401 else None

        r = await eventually(refused, timeout=10, what="the token to expire")
        assert "expired" in r.json()["error"]["message"], r.text


def forge(private_pem: str, kid: str, claims: dict) -> str:
    """A token minted with a stored private key, as whoever stole it could."""
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    now = int(time.time())
    return jwt.encode({**claims, "iat": now, "nbf": now, "exp": now + 2, "jti": "forged"}, key, algorithm="EdDSA",
                      headers={"kid": kid})


async def test_rotated_key_verifies_until_its_tokens_expired_then_never(tmp_path):
    async with running_gateway(gateway_settings(tmp_path, **SHORT)) as gw:
        account = await service_account(gw)
        old_token = await access_token(gw.url, account)
        old_kid = jwt.get_unverified_header(old_token)["kid"]
        r = await gw.admin.post("/admin/v1/oauth2/keys/rotate")
        assert r.status_code == 200 and r.json()["retired_kid"] == old_kid and r.json()["status"] == "current"
        new_token = await access_token(gw.url, account)
        new_kid = jwt.get_unverified_header(new_token)["kid"]
        assert new_kid == r.json()["kid"] != old_kid
        assert (await whoami(gw, old_token)).status_code == 200  # signed before the rotation: still valid
        assert (await whoami(gw, new_token)).status_code == 200
        keys = (await gw.admin.get("/admin/v1/oauth2/keys")).json()
        assert [(k["kid"], k["status"]) for k in keys] == [(new_kid, "current"), (old_kid, "retired")]
        assert all("private" not in str(k) for k in keys)
        assert {k["kid"] for k in (await gw.admin.get("/oauth2/jwks.json")).json()["keys"]} == {old_kid, new_kid}

        async def old_key_expired():
            keys = (await gw.admin.get("/admin/v1/oauth2/keys")).json()
            return any(k["kid"] == old_kid and k["status"] == "expired" for k in keys)

        # Every token the old key could have signed has expired now: it verifies nothing more.
        await eventually(old_key_expired, timeout=10, what="the retired key's window to end")
        stored = {k.kid: k for k in await gw.app[appkeys.STORE].list_signing_keys()}
        claims = jwt.decode(new_token, options={"verify_signature": False})
        r = await whoami(gw, forge(stored[old_kid].private_pem, old_kid, claims))
        assert r.status_code == 401 and "retired key" in r.json()["error"]["message"], r.text
        assert (await whoami(gw, forge(stored[new_kid].private_pem, new_kid, claims))).status_code == 200
        assert (await whoami(gw, old_token)).status_code == 401
        assert [k["kid"] for k in (await gw.admin.get("/oauth2/jwks.json")).json()["keys"]] == [new_kid]
        assert (await gw.admin.get("/admin/v1/oauth2/keys")).json()[1]["status"] == "expired"
        audit = (await gw.admin.get("/admin/v1/audit")).json()
        assert [e["action"] for e in audit if e["action"].startswith("oauth2.")] == ["oauth2.key.rotate"]


async def test_another_audience_refuses_the_token(tmp_path):
    """Two gateways on one database, with different audiences: neither accepts the other's tokens."""
    database_url = f"sqlite:///{tmp_path / 'shared.db'}"
    async with running_gateway(gateway_settings(tmp_path / "a", database_url=database_url)) as first, \
            running_gateway(gateway_settings(tmp_path / "b", database_url=database_url,
                                             oauth_audience="other-fleet")) as second:
        account = await service_account(first)
        token = await access_token(first.url, account)
        assert (await whoami(first, token)).status_code == 200
        r = await whoami(second, token)
        assert r.status_code == 401 and r.json()["error"]["message"] == (
            "The access token is for another audience: this gateway accepts 'other-fleet'.")
        other = await access_token(second.url, account)
        assert (await whoami(second, other)).status_code == 200 and (await whoami(first, other)).status_code == 401

        # A rotation on one replica: the other signs with the new key and verifies the tokens of both.
        await first.admin.post("/admin/v1/oauth2/keys/rotate")
        rotated = await access_token(second.url, account)
        assert (await whoami(second, rotated)).status_code == 200
        assert jwt.get_unverified_header(rotated)["kid"] != jwt.get_unverified_header(other)["kid"]
