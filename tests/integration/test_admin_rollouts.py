"""`/admin/v1/rollouts` (the rollout engine's persisted state) and endpoints' `mirror_percent`, over the API.

A real gateway (SQLite store) answers; compare-and-set, one-active-rollout and terminal-state rules
are checked through HTTP status codes and error codes, then read back.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.fleet import gateway_settings, running_gateway

ROLLOUT_KEYS = {"id", "model", "environment", "version", "kind", "playbook", "spec", "status", "step", "phase",
                "state", "reason", "owner", "version_no", "created_at", "updated_at"}


@pytest.fixture
async def gw(tmp_path):
    async with running_gateway(gateway_settings(tmp_path, access_log=False)) as gw:
        yield gw


def rollout_body(**overrides) -> dict:
    body = {"model": "demo-chat", "environment": "production", "version": "v2", "kind": "canary",
            "playbook": "canary.yaml", "spec": {"steps": [{"deploy": {}}, {"weight": 10}, {"finalize": {}}]},
            "owner": {"host": "ci-1", "pid": 4242}}
    body.update(overrides)
    return body


async def start(gw, **overrides) -> dict:
    r = await gw.admin.post("/admin/v1/rollouts", json=rollout_body(**overrides))
    assert r.status_code == 201, r.text
    return r.json()


async def patch(gw, rollout: dict, **changes):
    return await gw.admin.patch(f"/admin/v1/rollouts/{rollout['id']}",
                                json={"expected_version_no": rollout["version_no"], **changes})


# rollouts ---------------------------------------------------------------------------------


async def test_rollout_lifecycle(gw):
    rollout = await start(gw)
    assert set(rollout) == ROLLOUT_KEYS
    assert rollout["id"].startswith("ro_")
    assert (rollout["status"], rollout["step"], rollout["version_no"], rollout["reason"]) == ("running", 0, 1, None)
    assert rollout["owner"] == {"host": "ci-1", "pid": 4242} and rollout["spec"]["steps"][1] == {"weight": 10}

    r = await patch(gw, rollout, step=1, phase="started", state={"canary_weight": 10, "stable": {"ep_a": 100}})
    assert r.status_code == 200, r.text
    moved = r.json()
    assert (moved["step"], moved["phase"], moved["version_no"]) == (1, "started", 2)

    r = await gw.admin.post(f"/admin/v1/rollouts/{rollout['id']}/events",
                            json={"step": 1, "name": "weight", "phase": "passed", "message": "error rate 0.1%",
                                  "data": {"requests": 120, "error_rate": 0.001}})
    assert r.status_code == 201, r.text
    event = r.json()
    assert set(event) == {"id", "rollout_id", "ts", "step", "name", "phase", "message", "data"}
    assert event["rollout_id"] == rollout["id"] and event["data"]["requests"] == 120

    done = (await patch(gw, moved, status="succeeded", phase="done")).json()
    assert (done["status"], done["version_no"]) == ("succeeded", 3)

    r = await gw.admin.get(f"/admin/v1/rollouts/{rollout['id']}")
    assert r.status_code == 200
    full = r.json()
    assert set(full) == ROLLOUT_KEYS | {"events"}
    assert full["state"] == {"canary_weight": 10, "stable": {"ep_a": 100}}
    assert [(e["name"], e["phase"]) for e in full["events"]] == [("weight", "passed")]

    # Finished: the state is frozen, and the next rollout of the model may start.
    r = await patch(gw, done, status="running")
    assert r.status_code == 409 and r.json()["error"]["code"] == "rollout_finished"
    assert (await start(gw, version="v3"))["status"] == "running"


async def test_second_active_rollout_is_refused(gw):
    first = await start(gw)
    r = await gw.admin.post("/admin/v1/rollouts", json=rollout_body(version="v3"))
    assert r.status_code == 409
    error = r.json()["error"]
    assert error["code"] == "rollout_in_progress" and first["id"] in error["message"]
    aborting = (await patch(gw, first, status="aborting", reason="operator abort")).json()
    r = await gw.admin.post("/admin/v1/rollouts", json=rollout_body(version="v3"))
    assert r.status_code == 409 and first["id"] in r.json()["error"]["message"]
    assert (await start(gw, environment="staging"))["environment"] == "staging"  # another environment is free
    await patch(gw, aborting, status="aborted")
    assert (await start(gw, version="v3"))["version"] == "v3"


async def test_concurrent_starts_and_drivers(gw):
    results = await asyncio.gather(*(gw.admin.post("/admin/v1/rollouts", json=rollout_body()) for _ in range(5)))
    assert sorted(r.status_code for r in results) == [201, 409, 409, 409, 409]
    rollout = next(r.json() for r in results if r.status_code == 201)
    results = await asyncio.gather(*(patch(gw, rollout, step=i) for i in range(1, 5)))
    assert sorted(r.status_code for r in results) == [200, 409, 409, 409]
    assert {r.json()["error"]["code"] for r in results if r.status_code == 409} == {"rollout_changed"}


async def test_list_filters_newest_first(gw):
    old = await start(gw)
    await patch(gw, old, status="failed", reason="smoke failed")
    staging = await start(gw, environment="staging")
    current = await start(gw, version="v3")
    other = await start(gw, model="other")

    r = await gw.admin.get("/admin/v1/rollouts")
    assert [x["id"] for x in r.json()] == [other["id"], current["id"], staging["id"], old["id"]]
    assert "events" not in r.json()[0]
    r = await gw.admin.get("/admin/v1/rollouts", params={"model": "demo-chat", "env": "production"})
    assert [x["id"] for x in r.json()] == [current["id"], old["id"]]
    r = await gw.admin.get("/admin/v1/rollouts", params={"model": "demo-chat", "active": "true"})
    assert {x["id"] for x in r.json()} == {current["id"], staging["id"]}
    r = await gw.admin.get("/admin/v1/rollouts", params={"active": "false"})
    assert [x["id"] for x in r.json()] == [old["id"]]
    r = await gw.admin.get("/admin/v1/rollouts", params={"limit": "2"})
    assert len(r.json()) == 2


async def test_rollout_changes_are_audited(gw):
    rollout = await start(gw)
    await patch(gw, rollout, step=1, state={"canary_weight": 10})
    entries = (await gw.admin.get("/admin/v1/audit")).json()
    assert [(e["action"], e["target"]) for e in entries[:2]] == [("rollout.update", rollout["id"]),
                                                                  ("rollout.start", rollout["id"])]
    assert entries[0]["detail"] == {"step": 1, "state_keys": ["canary_weight"], "version_no": 2}


BAD_ROLLOUTS = [
    ("post", "/admin/v1/rollouts", rollout_body(model=None), 400, "'model' is required", "model"),
    ("post", "/admin/v1/rollouts", rollout_body(kind="big-bang"), 400, "'kind' must be one of", "kind"),
    ("post", "/admin/v1/rollouts", rollout_body(version=2), 400, "'version' must be of type str", "version"),
    ("post", "/admin/v1/rollouts", rollout_body(spec=[]), 400, "'spec' must be of type dict", "spec"),
    ("post", "/admin/v1/rollouts", rollout_body(owner={"host": "h"}), 400, "'owner' must be an object", "owner"),
    ("post", "/admin/v1/rollouts", rollout_body(owner={"host": "h", "pid": "1"}), 400, "'owner' must be", "owner"),
    ("post", "/admin/v1/rollouts", rollout_body(owner={"host": "h", "pid": 1, "x": 1}), 400, "'owner' must be",
     "owner"),
    ("post", "/admin/v1/rollouts", {**rollout_body(), "status": "running"}, 400, "Unknown field 'status'", "status"),
    ("post", "/admin/v1/rollouts", rollout_body(environment="prod uction"), 400, "'environment' must be",
     "environment"),
    ("patch", "/admin/v1/rollouts/{id}", {"step": 1}, 400, "'expected_version_no' is required",
     "expected_version_no"),
    ("patch", "/admin/v1/rollouts/{id}", {"expected_version_no": 1}, 400, "Nothing to change", None),
    ("patch", "/admin/v1/rollouts/{id}", {"expected_version_no": "1", "step": 1}, 400,
     "'expected_version_no' must be of type int", "expected_version_no"),
    ("patch", "/admin/v1/rollouts/{id}", {"expected_version_no": 1, "status": "paused"}, 400, "'status' must be one",
     "status"),
    ("patch", "/admin/v1/rollouts/{id}", {"expected_version_no": 1, "step": -1}, 400, "'step' must be >= 0", "step"),
    ("patch", "/admin/v1/rollouts/{id}", {"expected_version_no": 1, "step": 1.5}, 400, "'step' must be of type int",
     "step"),
    ("patch", "/admin/v1/rollouts/{id}", {"expected_version_no": 1, "state": "x"}, 400, "'state' must be of type dict",
     "state"),
    ("patch", "/admin/v1/rollouts/{id}", {"expected_version_no": 1, "version": "v9"}, 400, "Unknown field 'version'",
     "version"),
    ("patch", "/admin/v1/rollouts/{id}", {"expected_version_no": 7, "step": 1}, 409, "version_no 1, not 7",
     "expected_version_no"),
    ("patch", "/admin/v1/rollouts/ro_nope", {"expected_version_no": 1, "step": 1}, 404, "rollout 'ro_nope' not found",
     "rollout_id"),
    ("get", "/admin/v1/rollouts/ro_nope", None, 404, "rollout 'ro_nope' not found", "rollout_id"),
    ("get", "/admin/v1/rollouts?active=yes", None, 400, "'active' must be true or false", "active"),
    ("get", "/admin/v1/rollouts?limit=0", None, 400, "'limit' must be an integer", "limit"),
    ("post", "/admin/v1/rollouts/{id}/events", {"step": 0, "name": "deploy"}, 400, "'phase' is required", "phase"),
    ("post", "/admin/v1/rollouts/{id}/events", {"step": 0, "name": "deploy", "phase": "done"}, 400,
     "'phase' must be one of", "phase"),
    ("post", "/admin/v1/rollouts/{id}/events", {"step": "0", "name": "deploy", "phase": "info"}, 400,
     "'step' must be of type int", "step"),
    ("post", "/admin/v1/rollouts/{id}/events", {"step": 0, "name": "deploy", "phase": "info", "data": [1]}, 400,
     "'data' must be of type dict", "data"),
    ("post", "/admin/v1/rollouts/{id}/events", {"step": 0, "name": "deploy", "phase": "info", "message": "a\x00"},
     400, "control characters", "message"),
    ("post", "/admin/v1/rollouts/{id}/events", {"step": 0, "name": "deploy", "phase": "info", "level": 1}, 400,
     "Unknown field 'level'", "level"),
    ("post", "/admin/v1/rollouts/ro_nope/events", {"step": 0, "name": "deploy", "phase": "info"}, 404,
     "rollout 'ro_nope' not found", "rollout_id"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "message", "param"), BAD_ROLLOUTS)
async def test_bad_rollout_input(gw, method, path, body, status, message, param):
    rollout = await start(gw)
    kwargs = {"json": body} if body is not None else {}
    r = await gw.admin.request(method.upper(), path.replace("{id}", rollout["id"]), **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["param"] == param, error
    after = (await gw.admin.get(f"/admin/v1/rollouts/{rollout['id']}")).json()
    assert (after["version_no"], after["events"]) == (1, [])  # nothing refused was written


@pytest.mark.parametrize("raw", [b"[1]", b"{oops", b"", b"null"])
@pytest.mark.parametrize("where", ["/admin/v1/rollouts", "/admin/v1/rollouts/{id}", "/admin/v1/rollouts/{id}/events"])
async def test_rollout_bodies_must_be_json_objects(gw, where, raw):
    rollout = await start(gw)
    method = "PATCH" if where.endswith("{id}") else "POST"
    r = await gw.admin.request(method, where.replace("{id}", rollout["id"]), content=raw)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


# endpoints: mirror_percent ----------------------------------------------------------------


async def test_endpoint_mirror_percent(gw):
    model = await gw.register("demo-chat", "http://127.0.0.1:9001")
    assert model["endpoint"]["mirror_percent"] == 0.0
    model = await gw.register("demo-chat", "http://127.0.0.1:9002", release="demo-chat-production-canary",
                              status="disabled", weight=0, mirror_percent=25)
    canary = model["endpoint"]
    assert canary["mirror_percent"] == 25.0
    r = await gw.admin.patch(f"/admin/v1/endpoints/{canary['id']}", json={"mirror_percent": 12.5})
    assert r.status_code == 200 and r.json()["mirror_percent"] == 12.5
    r = await gw.admin.patch(f"/admin/v1/endpoints/{canary['id']}", json={"weight": 10})
    assert r.json()["mirror_percent"] == 12.5  # absent = unchanged
    listed = (await gw.admin.get("/admin/v1/models/production/demo-chat")).json()["endpoints"]
    assert [e["mirror_percent"] for e in listed] == [0.0, 12.5]
    # The data plane's snapshot carries it too (the admin change was announced).
    from gateway import appkeys

    route = gw.app[appkeys.REGISTRY].get("demo-chat", "production")
    assert sorted(s.endpoint.mirror_percent for s in route.states) == [0.0, 12.5]
    assert (await gw.admin.get("/admin/v1/audit")).json()[0]["detail"] == {"weight": 10}


@pytest.mark.parametrize("value", [-0.5, 100.01, "10", True, None, [], 1e308])
async def test_endpoint_mirror_percent_bad_input(gw, value):
    model = await gw.register("demo-chat", "http://127.0.0.1:9001")
    endpoint_id = model["endpoint"]["id"]
    r = await gw.admin.patch(f"/admin/v1/endpoints/{endpoint_id}", json={"mirror_percent": value})
    assert r.status_code == 400, r.text
    if value is not None:  # null is "absent": nothing to change
        assert r.json()["error"]["param"] == "mirror_percent"
        r = await gw.admin.post("/admin/v1/models", json={"name": "demo-chat", "endpoint": "http://127.0.0.1:9002",
                                                          "mirror_percent": value})
        assert r.status_code == 400 and r.json()["error"]["param"] == "mirror_percent"
    endpoints = (await gw.admin.get("/admin/v1/models/production/demo-chat")).json()["endpoints"]
    assert [(e["url"], e["mirror_percent"]) for e in endpoints] == [("http://127.0.0.1:9001", 0.0)]
