"""`/admin/v1/releases`: a deployer release's Helm-like revision history over the admin API.

A real gateway (SQLite store) answers; every assertion reads the result back through the API.
"""

from __future__ import annotations

import pytest

from tests.fleet import gateway_settings, running_gateway

STABLE = "demo-chat-production"
CANARY = "demo-chat-production-canary"


@pytest.fixture
async def gw(tmp_path):
    async with running_gateway(gateway_settings(tmp_path, access_log=False)) as gw:
        yield gw


def revision_body(**overrides) -> dict:
    body = {"model": "demo-chat", "environment": "production", "deployer": "local", "track": "stable",
            "version": "v1", "values": {"replicaCount": 1, "local": {"engine": "simulator"}}, "status": "deployed"}
    body.update(overrides)
    return body


async def add_revision(gw, name: str = STABLE, **overrides) -> dict:
    r = await gw.admin.post(f"/admin/v1/releases/{name}/revisions", json=revision_body(**overrides))
    assert r.status_code == 201, r.text
    return r.json()


async def test_revision_history_like_helm(gw):
    first = await add_revision(gw, description="Install complete", runtime={"processes": [{"pid": 1, "port": 9001}]},
                               endpoints=["http://127.0.0.1:9001"])
    assert set(first) == {"release", "revision", "version", "status", "values", "endpoints", "runtime",
                          "description", "created_at", "updated_at"}
    assert (first["release"], first["revision"], first["status"]) == (STABLE, 1, "deployed")
    second = await add_revision(gw, version="v2", status="pending-upgrade")
    assert second["revision"] == 2

    r = await gw.admin.patch(f"/admin/v1/releases/{STABLE}/revisions/2",
                             json={"status": "deployed", "endpoints": ["http://127.0.0.1:9002/"],
                                   "runtime": {"processes": [{"pid": 2, "port": 9002}]},
                                   "description": "Upgrade complete"})
    assert r.status_code == 200, r.text
    assert r.json()["endpoints"] == ["http://127.0.0.1:9002"] and r.json()["status"] == "deployed"

    r = await gw.admin.get(f"/admin/v1/releases/{STABLE}")
    assert r.status_code == 200
    release = r.json()
    assert {k: release[k] for k in ("name", "model", "environment", "deployer", "track", "revision", "version",
                                    "status", "description")} == {
        "name": STABLE, "model": "demo-chat", "environment": "production", "deployer": "local", "track": "stable",
        "revision": 2, "version": "v2", "status": "deployed", "description": "Upgrade complete"}
    assert release["runtime"] == {"processes": [{"pid": 2, "port": 9002}]}
    assert [(h["revision"], h["version"], h["status"]) for h in release["history"]] == [
        (1, "v1", "superseded"), (2, "v2", "deployed")]
    assert release["history"][0]["values"] == {"replicaCount": 1, "local": {"engine": "simulator"}}

    # A failed upgrade leaves the deployed revision alone.
    failed = await add_revision(gw, version="v3", status="failed", description="not ready within 60s\nlog: r3-0.log")
    assert failed["revision"] == 3
    statuses = [h["status"] for h in (await gw.admin.get(f"/admin/v1/releases/{STABLE}")).json()["history"]]
    assert statuses == ["superseded", "deployed", "failed"]


async def test_list_filters_and_delete(gw):
    await add_revision(gw, CANARY, track="canary", version="v2")
    await add_revision(gw)
    await add_revision(gw, "other-staging", model="other", environment="staging", deployer="helm")

    r = await gw.admin.get("/admin/v1/releases")
    assert [x["name"] for x in r.json()] == [STABLE, CANARY, "other-staging"]
    r = await gw.admin.get("/admin/v1/releases", params={"model": "demo-chat", "env": "production"})
    assert [(x["name"], x["track"]) for x in r.json()] == [(STABLE, "stable"), (CANARY, "canary")]
    r = await gw.admin.get("/admin/v1/releases", params={"deployer": "helm"})
    assert [x["name"] for x in r.json()] == ["other-staging"]
    assert "history" not in r.json()[0]

    r = await gw.admin.delete(f"/admin/v1/releases/{CANARY}")
    assert r.status_code == 200 and r.json() == {"deleted": CANARY}
    r = await gw.admin.get(f"/admin/v1/releases/{CANARY}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "release_not_found"
    assert [x["name"] for x in (await gw.admin.get("/admin/v1/releases")).json()] == [STABLE, "other-staging"]


async def test_release_changes_are_audited(gw):
    await add_revision(gw)
    await gw.admin.patch(f"/admin/v1/releases/{STABLE}/revisions/1", json={"status": "superseded"})
    await gw.admin.delete(f"/admin/v1/releases/{STABLE}")
    entries = (await gw.admin.get("/admin/v1/audit")).json()
    assert [(e["action"], e["target"]) for e in entries[:3]] == [
        ("release.delete", STABLE), ("release.update", STABLE), ("release.revision", STABLE)]
    assert entries[2]["detail"]["revision"] == 1 and entries[1]["detail"]["status"] == "superseded"


BAD_REQUESTS = [
    ("post", f"/admin/v1/releases/{STABLE}/revisions", revision_body(model=None), 400, "'model' is required", "model"),
    ("post", f"/admin/v1/releases/{STABLE}/revisions", revision_body(deployer="kubectl"), 400, "'deployer' must be one",
     "deployer"),
    ("post", f"/admin/v1/releases/{STABLE}/revisions", revision_body(track="beta"), 400, "'track' must be one",
     "track"),
    ("post", f"/admin/v1/releases/{STABLE}/revisions", revision_body(status="done"), 400, "'status' must be one",
     "status"),
    ("post", f"/admin/v1/releases/{STABLE}/revisions", revision_body(version=3), 400, "'version' must be of type str",
     "version"),
    ("post", f"/admin/v1/releases/{STABLE}/revisions", revision_body(values=[1]), 400, "'values' must be of type dict",
     "values"),
    ("post", f"/admin/v1/releases/{STABLE}/revisions", revision_body(endpoints="http://a"), 400, "'endpoints' must be",
     "endpoints"),
    ("post", f"/admin/v1/releases/{STABLE}/revisions", revision_body(endpoints=["ftp://a"]), 400, "http(s) URL",
     "endpoints"),
    ("post", f"/admin/v1/releases/{STABLE}/revisions", revision_body(description="a\x00b"), 400, "control characters",
     "description"),
    ("post", f"/admin/v1/releases/{STABLE}/revisions", {**revision_body(), "chart": "x"}, 400, "Unknown field 'chart'",
     "chart"),
    ("post", "/admin/v1/releases/bad%20name/revisions", revision_body(), 400, "'name' must be", "name"),
    ("post", f"/admin/v1/releases/{STABLE}/revisions", revision_body(model="other"), 409,
     "belongs to model 'demo-chat'", "model"),
    ("patch", f"/admin/v1/releases/{STABLE}/revisions/1", {}, 400, "Nothing to change", None),
    ("patch", f"/admin/v1/releases/{STABLE}/revisions/1", {"version": "v2"}, 400, "Unknown field 'version'", "version"),
    ("patch", f"/admin/v1/releases/{STABLE}/revisions/1", {"status": "gone"}, 400, "'status' must be one", "status"),
    ("patch", f"/admin/v1/releases/{STABLE}/revisions/1", {"runtime": "x"}, 400, "'runtime' must be of type dict",
     "runtime"),
    ("patch", f"/admin/v1/releases/{STABLE}/revisions/0", {"status": "failed"}, 400, "'revision' must be", "revision"),
    ("patch", f"/admin/v1/releases/{STABLE}/revisions/abc", {"status": "failed"}, 400, "'revision' must be",
     "revision"),
    ("patch", f"/admin/v1/releases/{STABLE}/revisions/9", {"status": "failed"}, 404, "has no revision 9", "revision"),
    ("patch", "/admin/v1/releases/nope/revisions/1", {"status": "failed"}, 404, "release 'nope' not found", "release"),
    ("get", "/admin/v1/releases/nope", None, 404, "release 'nope' not found", "release"),
    ("get", "/admin/v1/releases?deployer=kubectl", None, 400, "'deployer' must be one", "deployer"),
    ("delete", "/admin/v1/releases/nope", None, 404, "release 'nope' not found", "release"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "message", "param"), BAD_REQUESTS)
async def test_bad_release_input(gw, method, path, body, status, message, param):
    await add_revision(gw)
    kwargs = {"json": body} if body is not None else {}
    r = await gw.admin.request(method.upper(), path, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["param"] == param, error
    history = (await gw.admin.get(f"/admin/v1/releases/{STABLE}")).json()["history"]
    assert [(h["revision"], h["status"]) for h in history] == [(1, "deployed")]  # nothing refused was written


@pytest.mark.parametrize("raw", [b"[1]", b"{oops", b"", b'"text"'])
async def test_revision_body_must_be_a_json_object(gw, raw):
    r = await gw.admin.post(f"/admin/v1/releases/{STABLE}/revisions", content=raw)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


async def test_releases_need_the_admin_token(gw):
    import httpx

    async with httpx.AsyncClient(base_url=gw.url) as anon:
        assert (await anon.get("/admin/v1/releases")).status_code == 401
        r = await anon.post(f"/admin/v1/releases/{STABLE}/revisions", json=revision_body())
        assert r.status_code == 401
