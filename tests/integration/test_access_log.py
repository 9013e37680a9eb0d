"""The access log of a real gateway: one JSON line per request, of every kind, never a secret."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import aiohttp
import httpx
import orjson
from aiohttp import web

from gateway import appkeys
from gateway.app import create_app
from tests.fleet import (
    ADMIN_TOKEN,
    gateway_settings,
    running_gateway,
    serve_app,
    sim_pod,
)
from tests.support import eventually, free_port, wait_for

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
QUERY_SECRET = "q-s3cr3t"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "a body secret"}], "max_tokens": 2}


def access_lines(text: str) -> dict[str, dict]:
    """JSON access lines by request id (app logs go to stderr; stdout holds only these)."""
    lines = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    assert all("request_id" in line for line in lines), lines
    return {line["request_id"]: line for line in lines}


async def test_every_kind_of_request_gets_one_json_line_without_secrets(tmp_path, capfd):
    async with sim_pod("m") as pod, running_gateway(gateway_settings(tmp_path)) as gw:
        await gw.create_org()
        await gw.register("m", pod)
        key = (await gw.create_key())["key"]
        auth = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=gw.url) as client:
            chat = await client.post(f"/v1/chat/completions?api_key={QUERY_SECRET}", json=CHAT,
                                     headers={**auth, "X-Request-ID": "rid-chat"})
            unknown_model = await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"},
                                              headers={**auth, "X-Request-ID": "rid-404-model"})
            bad_key = await client.post("/v1/chat/completions", json=CHAT,
                                        headers={"Authorization": "Bearer sk-fg-wrong", "X-Request-ID": "rid-401"})
            unknown_path = await client.get(f"/nope/{QUERY_SECRET[:1]}?token={QUERY_SECRET}",
                                            headers={"X-Request-ID": "rid-404-path"})
            status = await client.get("/v1/status/healthz", headers={"X-Request-ID": "rid-status"})
        admin = await gw.admin.get("/admin/v1/organizations/acme", headers={"X-Request-ID": "rid-admin"})
    assert [chat.status_code, unknown_model.status_code, bad_key.status_code, unknown_path.status_code,
            status.status_code, admin.status_code] == [200, 404, 401, 404, 200, 200]
    out = capfd.readouterr()
    for secret in (key, ADMIN_TOKEN, QUERY_SECRET, "a body secret", "sk-fg-wrong"):
        assert secret not in out.out and secret not in out.err, secret
    lines = access_lines(out.out)

    line = lines["rid-chat"]
    assert ISO_UTC.match(line["time"])
    assert (line["method"], line["path"], line["status"]) == ("POST", "/v1/chat/completions", 200)
    assert line["latency_ms"] > 0 and "error_code" not in line
    assert (lines["rid-404-model"]["status"], lines["rid-404-model"]["error_code"]) == (404, "model_not_found")
    assert (lines["rid-401"]["status"], lines["rid-401"]["error_code"]) == (401, "invalid_api_key")
    assert lines["rid-404-path"]["path"] == "/nope/q" and lines["rid-404-path"]["error_code"] == "not_found"
    assert lines["rid-status"]["path"] == "/v1/status/healthz"
    assert lines["rid-admin"]["path"] == "/admin/v1/organizations/{org}"  # the route, not the org's name


async def test_the_data_plane_fields_are_merged_into_the_line(tmp_path, capfd):
    async with sim_pod("m") as pod, running_gateway(gateway_settings(tmp_path)) as gw:
        await gw.create_org()
        await gw.register("m", pod)
        key = (await gw.create_key())["key"]
        async with httpx.AsyncClient(base_url=gw.url) as client:
            r = await client.post("/v1/chat/completions", json=CHAT,
                                  headers={"Authorization": f"Bearer {key}", "X-Request-ID": "rid-chat"})
            assert r.status_code == 200
    line = access_lines(capfd.readouterr().out)["rid-chat"]
    # What the data plane adds (appkeys.ACCESS): who, what, where, and how long upstream took.
    assert line["org_id"].startswith("org_") and line["key_id"].startswith("key_")
    assert line["model"] == "m" and line["endpoint"] == pod
    assert 0 < line["upstream_ms"] <= line["latency_ms"]


async def test_client_disconnects_internal_errors_and_handler_fields(tmp_path, capfd):
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    async def annotated(request: web.Request) -> web.Response:
        # What a handler may add; fields outside the contract (a header value here) are dropped.
        request[appkeys.ACCESS] = {"org_id": "org_x", "model": "m", "upstream_ms": 1.5,
                                   "authorization": request.headers["Authorization"]}
        return web.json_response({})

    async with sim_pod("m", tokens_per_s=2) as pod:
        app = create_app(gateway_settings(tmp_path), background=False)
        app.router.add_get("/test/broken", broken)
        app.router.add_get("/test/annotated", annotated)
        async with serve_app(app) as url, httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
            assert (await admin.post("/admin/v1/organizations", json={"name": "acme"})).status_code == 201
            assert (await admin.post("/admin/v1/models", json={"name": "m", "endpoint": pod})).status_code in (200, 201)
            key = (await admin.post("/admin/v1/api-keys", json={"org": "acme"})).json()["key"]
            assert (await admin.get("/test/broken", headers={"X-Request-ID": "rid-500"})).status_code == 500
            assert (await admin.get("/test/annotated", headers={"X-Request-ID": "rid-200"})).status_code == 200
            async with aiohttp.ClientSession() as session:
                response = await session.post(url + "/v1/chat/completions",
                                              json={**CHAT, "stream": True, "max_tokens": 100},
                                              headers={"Authorization": f"Bearer {key}", "X-Request-ID": "rid-499"})
                assert response.status == 200
                await response.content.readline()  # the stream has begun (a token every 0.5 s)...
                response.close()  # ...and the client goes away

            lines: dict[str, dict] = {}

            async def disconnect_logged() -> bool:
                lines.update(access_lines(capfd.readouterr().out))
                return "rid-499" in lines

            await eventually(disconnect_logged, what="the access line of the disconnected client")
    gone = lines["rid-499"]
    assert (gone["status"], gone["error_code"]) == (499, "client_disconnected")
    assert (lines["rid-500"]["status"], lines["rid-500"]["error_code"]) == (500, "internal_error")
    annotated_line = lines["rid-200"]
    assert (annotated_line["org_id"], annotated_line["model"], annotated_line["upstream_ms"]) == ("org_x", "m", 1.5)
    assert "authorization" not in annotated_line and ADMIN_TOKEN not in str(lines)


def test_a_gateway_process_writes_json_access_and_app_logs_to_its_log(tmp_path):
    """`opsctl gateway serve`: access lines on stdout, app logs on stderr, all JSON, flushed on SIGTERM."""
    port = free_port()
    log_path = tmp_path / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    env.update(FLEETGATE_ADMIN_TOKEN=ADMIN_TOKEN, FLEETGATE_STATE_DIR=str(tmp_path / "state"),
               FLEETGATE_USAGE_SINK="none", FLEETGATE_PORT=str(port))
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "opsctl", "gateway", "serve"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert proc.poll() is None, log_path.read_text()
            return httpx.get(url + "/v1/status/readyz", timeout=2).status_code == 200

        wait_for(ready, timeout=30, what="the gateway process")
        r = httpx.get(url + "/admin/v1/organizations", headers={"Authorization": f"Bearer {ADMIN_TOKEN}",
                                                                "X-Request-ID": "rid-process"})
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    records = [orjson.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    access = [r for r in records if r.get("request_id") == "rid-process"]
    assert len(access) == 1 and access[0]["status"] == 200 and access[0]["path"] == "/admin/v1/organizations"
    app_logs = [r for r in records if "logger" in r]
    assert any(r["logger"] == "gateway.http.server" and "listening" in r["message"] for r in app_logs), records
    assert ADMIN_TOKEN not in log_path.read_text()
