"""Admin API bad input (missing fields, wrong types, duplicates, unknown ids) and the OpenAPI document."""

from __future__ import annotations

import pytest

from tests.fleet import gateway_settings, running_gateway


@pytest.fixture
async def gw(tmp_path):
    async with running_gateway(gateway_settings(tmp_path)) as gw:
        await gw.create_org("acme")
        yield gw


BAD_REQUESTS = [
    ("post", "/admin/v1/organizations", {}, 400, "'name' is required"),
    ("post", "/admin/v1/organizations", {"name": 5}, 400, "'name' must be of type str"),
    ("post", "/admin/v1/organizations", {"name": "acme"}, 409, "already exists"),
    ("post", "/admin/v1/organizations", {"name": "x", "rpm_limit": 0}, 400, "'rpm_limit' must be >= 1"),
    ("post", "/admin/v1/organizations", {"name": "x", "rpm_limit": True}, 400, "'rpm_limit' must be of type int"),
    ("get", "/admin/v1/organizations/nope", None, 404, "not found"),
    ("patch", "/admin/v1/organizations/nope", {"rpm_limit": 5}, 404, "not found"),
    ("patch", "/admin/v1/organizations/acme", {}, 400, "Nothing to change"),
    ("patch", "/admin/v1/organizations/acme", {"rpm_limit": "5"}, 400, "'rpm_limit' must be of type int"),
    ("post", "/admin/v1/api-keys", {}, 400, "'org' is required"),
    ("post", "/admin/v1/api-keys", {"org": "nope"}, 404, "not found"),
    ("post", "/admin/v1/api-keys", {"org": "acme", "models": "a"}, 400, "'models' must be a list"),
    ("post", "/admin/v1/api-keys", {"org": "acme", "expires_in": "-1d"}, 400, "'expires_in'"),
    ("post", "/admin/v1/api-keys/key_nope/revoke", None, 404, "not found"),
    ("get", "/admin/v1/api-keys?org=nope", None, 404, "not found"),
    ("post", "/admin/v1/models", {}, 400, "'name' is required"),
    ("post", "/admin/v1/models", {"name": "m", "endpoint": "nope"}, 400, "http(s) URL"),
    ("post", "/admin/v1/models", {"name": "m", "weight": -1}, 400, "'weight' must be >= 0"),
    ("post", "/admin/v1/models", {"name": "m", "input_price": "1"}, 400, "'input_price' must be of type float"),
    ("post", "/admin/v1/models", {"name": "m", "status": "maybe"}, 400, "'status' must be one of"),
    ("patch", "/admin/v1/models/production/nope", {"status": "disabled"}, 404, "not found"),
    ("patch", "/admin/v1/models/production/nope", {}, 400, "Nothing to change"),
    ("delete", "/admin/v1/models/production/nope", None, 404, "not found"),
    ("patch", "/admin/v1/endpoints/ep_nope", {"weight": 5}, 404, "not found"),
    ("delete", "/admin/v1/endpoints/ep_nope", None, 404, "not found"),
    ("put", "/admin/v1/budgets", {"org": "acme", "usd": -1, "period": "daily"}, 400, "'usd' must be >= 0"),
    ("put", "/admin/v1/budgets", {"org": "acme", "usd": 1, "period": "weekly"}, 400, "'period' must be one of"),
    ("put", "/admin/v1/budgets", {"org": "nope", "usd": 1, "period": "daily"}, 404, "not found"),
    ("put", "/admin/v1/budgets", {"org": "acme", "usd": 1}, 400, "'period' is required"),
    ("put", "/admin/v1/budgets", {"org": "acme", "usd": 1, "period": "daily", "soft_limit_pct": 101}, 400,
     "soft_limit_pct"),
    ("get", "/admin/v1/budgets/nope", None, 404, "not found"),
    ("get", "/admin/v1/audit?limit=abc", None, 400, "'limit' must be an integer"),
]


async def test_an_org_limit_set_to_null_is_removed(gw):
    r = await gw.admin.patch("/admin/v1/organizations/acme", json={"rpm_limit": 60, "tpm_limit": 1000})
    assert (r.json()["rpm_limit"], r.json()["tpm_limit"]) == (60, 1000)
    r = await gw.admin.patch("/admin/v1/organizations/acme", json={"rpm_limit": None})
    assert r.status_code == 200 and (r.json()["rpm_limit"], r.json()["tpm_limit"]) == (None, 1000)


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), BAD_REQUESTS)
async def test_bad_admin_input(gw, method, path, body, status, message):
    kwargs = {"json": body} if body is not None else {}
    r = await getattr(gw.admin, method)(path, **kwargs) if method != "delete" else await gw.admin.delete(path)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["type"]


async def test_admin_needs_the_token_and_bodies_must_be_json(gw):
    import httpx

    async with httpx.AsyncClient(base_url=gw.url) as anon:
        r = await anon.get("/admin/v1/organizations")
        assert r.status_code == 401
        r = await anon.get("/admin/v1/organizations", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and "wrong" not in r.text
        r = await anon.post("/admin/v1/usage/flush")
        assert r.status_code == 401
    r = await gw.admin.post("/admin/v1/usage/flush")
    assert r.status_code == 200 and r.json() == {"flushed": False, "reason": "usage_sink is none"}
    r = await gw.admin.post("/admin/v1/organizations", content=b"{oops")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = await gw.admin.post("/admin/v1/organizations", content=b"[1]")
    assert r.status_code == 400


async def test_changes_are_audited(gw):
    await gw.register("m", "http://127.0.0.1:9")
    actions = [e["action"] for e in (await gw.admin.get("/admin/v1/audit")).json()]
    assert actions[:2] == ["registry.register", "org.create"]


async def test_openapi_lists_every_route(gw):
    spec = (await gw.admin.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    for path in ("/v1/chat/completions", "/v1/models", "/admin/v1/organizations", "/admin/v1/budgets",
                 "/v1/status/readyz"):
        assert path in spec["paths"]
    assert "post" in spec["paths"]["/v1/chat/completions"]
    # Each admin operation says the role its access rule needs; OAuth2's token endpoint has its own errors.
    assert spec["paths"]["/admin/v1/models"]["post"]["description"].startswith("Needs the operator role (global")
    token = spec["paths"]["/oauth2/token"]["post"]
    assert token["tags"] == ["oauth2"] and "security" not in token and "RFC 6749" in token["responses"]["default"][
        "description"]


async def test_unknown_path_and_method_are_openai_shaped(gw):
    r = await gw.admin.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await gw.admin.get("/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
