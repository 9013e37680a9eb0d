"""`opsctl gateway serve --workers 2`: two processes on one port, metrics aggregated across them."""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.fleet import sim_pod
from tests.integration.test_dataplane import fire
from tests.support import wait_for


def _total_requests(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == "fleetgate_requests"
               for s in f.samples if s.name == "fleetgate_requests_total")


async def test_two_workers_share_a_port(gateway_factory, redis_url):
    async with sim_pod("m") as pod:
        gw = await asyncio.to_thread(gateway_factory, FLEETGATE_WORKERS="2", FLEETGATE_REDIS_URL=redis_url)
        import psutil

        workers = psutil.Process(gw.proc.pid).children()
        assert len([p for p in workers if "python" in p.name()]) >= 2
        with gw.admin() as admin:
            admin.post("/admin/v1/organizations", json={"name": "acme"})
            admin.post("/admin/v1/models", json={"name": "m", "endpoint": pod})
            key = admin.post("/admin/v1/api-keys", json={"org": "acme"}).json()["key"]
        # The other worker hears of the model through Redis pub/sub; connections land on either worker.
        def everywhere() -> bool:
            return all(httpx.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"]
                       for _ in range(20))

        wait_for(everywhere, timeout=5, what="model visible on both workers")
        statuses = await fire(gw.url, key, 400, concurrency=32)
        assert statuses[200] == 400, statuses
        assert _total_requests(gw.url) >= 400
        gw.stop(signal.SIGTERM)
        assert gw.proc.returncode == 0

        def all_gone() -> bool:
            return not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)

        wait_for(all_gone, timeout=10, what="worker processes to exit")
        assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None


def test_workers_that_cannot_start_stop_the_server_with_one_line(tmp_path, redis_url):
    """A port held by someone else: the workers fail to bind. The parent must not restart them
    forever; it says why in one line and exits 1."""
    import socket
    import subprocess
    import sys

    from tests.support import free_port, repo_root

    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        env = {**os.environ, "FLEETGATE_STATE_DIR": str(tmp_path / "state"), "FLEETGATE_REDIS_URL": redis_url,
               "FLEETGATE_ADMIN_TOKEN": "t", "FLEETGATE_USAGE_SINK": "none"}
        done = subprocess.run([sys.executable, "-m", "opsctl", "gateway", "serve", "--port", str(port),
                               "--workers", "2"], env=env, cwd=repo_root(), capture_output=True, text=True,
                              timeout=60)
    assert done.returncode == 1, done.stderr
    assert "could not start" in done.stderr
    assert "Traceback" not in done.stderr
