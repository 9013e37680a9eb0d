"""Running the gateway: one process, or N worker processes sharing a port (SO_REUSEPORT).

Workers share nothing but Redis and the store; Prometheus metrics go through a
multiprocess directory so `/metrics` on any worker reports the whole server.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time

from aiohttp import web

from gateway.app import create_app
from gateway.settings import Settings

log = logging.getLogger(__name__)


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        return
    uvloop.install() if hasattr(uvloop, "install") else None


def run_worker(settings: Settings, index: int = 0, *, reuse_port: bool = False) -> None:
    """Serve until SIGINT/SIGTERM (blocking)."""
    install_uvloop()
    app = create_app(settings, worker_id=f"gw{settings.port}-{index}")
    web.run_app(app, host=settings.host, port=settings.port, reuse_port=reuse_port or None,
                handler_cancellation=True, access_log=None, print=None, shutdown_timeout=10.0)


def _worker_main(settings: Settings, index: int) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format=f"%(asctime)s w{index} %(levelname)s %(name)s: %(message)s")
    run_worker(settings, index, reuse_port=True)


def serve(settings: Settings) -> None:
    """Run `settings.workers` processes on one port; restart a worker that dies."""
    if settings.workers == 1:
        run_worker(settings)
        return
    metrics_dir = tempfile.mkdtemp(prefix="fleetgate-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    ctx = multiprocessing.get_context("spawn")
    procs: dict[int, multiprocessing.Process] = {}
    stopping = False

    def start(index: int) -> None:
        proc = ctx.Process(target=_worker_main, args=(settings, index), name=f"fleetgate-worker-{index}")
        proc.start()
        procs[index] = proc

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs.values():
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for i in range(settings.workers):
            start(i)
        while not stopping:
            for index, proc in list(procs.items()):
                if not proc.is_alive() and not stopping:
                    log.warning("worker %d exited with %s; restarting", index, proc.exitcode)
                    start(index)
            time.sleep(0.5)
        for proc in procs.values():
            proc.join(15)
            if proc.is_alive():
                proc.kill()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
