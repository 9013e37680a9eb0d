"""PostgreSQL and Redis both unreachable: the last good snapshot keeps routing, readiness says degraded."""

from __future__ import annotations

from collections import Counter

import psycopg

from tests.fleet import gateway_settings, running_gateway, sim_pod
from tests.integration.test_dataplane import fire
from tests.support import PostgresDatabase, eventually


def _set_connections(url: str, allowed: bool) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PostgresDatabase.admin_dsn, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"true" if allowed else "false"}')
        if not allowed:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


async def test_last_good_snapshot_serves_when_store_and_redis_are_down(tmp_path, postgres_url, redis_server,
                                                                      redis_url):
    settings = gateway_settings(tmp_path, database_url=postgres_url, redis_url=redis_url, redis_timeout_ms=200)
    async with sim_pod("m") as pod, running_gateway(settings) as gw:
        await gw.create_org()
        await gw.register("m", pod)
        key = (await gw.create_key())["key"]
        assert await fire(gw.url, key, 20) == Counter({200: 20})
        _set_connections(postgres_url, False)
        redis_server.stop()
        try:
            assert await fire(gw.url, key, 50) == Counter({200: 50})
            ready = (await gw.admin.get("/v1/status/readyz")).json()
            assert ready["status"] == "degraded" and set(ready["degraded"]) == {"store", "redis"}
            # An admin write cannot reach the store: a clear 503, not a hang or a crash.
            r = await gw.admin.post("/admin/v1/organizations", json={"name": "later"})
            assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
        finally:
            _set_connections(postgres_url, True)
            redis_server.start()
        async def store_ok() -> bool:  # the pool reconnects with a back-off
            return (await gw.admin.get("/v1/status/readyz")).json()["checks"]["store"] == "ok"

        await eventually(store_ok, timeout=10, interval=0.1, what="the store to be reachable again")
        assert (await gw.admin.post("/admin/v1/organizations", json={"name": "later"})).status_code == 201
