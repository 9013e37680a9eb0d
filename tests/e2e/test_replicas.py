"""Two gateway processes sharing PostgreSQL and Redis: changes reach both in well under a second."""

from __future__ import annotations

import time

import httpx

from tests.fleet import sim_pod  # noqa: F401 - pods run in-process below
from tests.support import wait_for


def _models(gw, key: str) -> list[str] | None:
    r = httpx.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    return [m["id"] for m in r.json()["data"]] if r.status_code == 200 else None


def test_registry_change_and_revocation_reach_the_other_replica_fast(gateway_factory, postgres_url, redis_url):
    shared = {"FLEETGATE_DATABASE_URL": postgres_url, "FLEETGATE_REDIS_URL": redis_url}
    a = gateway_factory(**shared)
    b = gateway_factory(**shared)
    with a.admin() as admin:
        assert admin.post("/admin/v1/organizations", json={"name": "acme"}).status_code == 201
        created = admin.post("/admin/v1/api-keys", json={"org": "acme"}).json()
        key = created["key"]
        assert _models(b, key) == []  # B knows the key (from the store) and has no models yet

        started = time.perf_counter()
        r = admin.post("/admin/v1/models", json={"name": "fresh", "endpoint": "http://127.0.0.1:9"})
        assert r.status_code == 201
        wait_for(lambda: _models(b, key) == ["fresh"], timeout=5, interval=0.01, what="model on replica B")
        registry_s = time.perf_counter() - started

        started = time.perf_counter()
        assert admin.post(f"/admin/v1/api-keys/{created['id']}/revoke").status_code == 200
        wait_for(lambda: _models(b, key) is None, timeout=5, interval=0.01, what="revocation on replica B")
        revoke_s = time.perf_counter() - started
    print(f"registry change visible on B after {registry_s * 1000:.0f} ms, revocation after {revoke_s * 1000:.0f} ms")
    # Periodic refresh is 30 s and the key cache 60 s: only pub/sub explains sub-second visibility.
    assert registry_s < 1.0 and revoke_s < 1.0
