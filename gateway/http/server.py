"""Running the gateway: one process, or N worker processes sharing a port (SO_REUSEPORT).

Workers share nothing but Redis and the store; Prometheus metrics go through a
multiprocess directory so `/metrics` on any worker reports the whole server.
`GatewayRunner` is the one way to serve a gateway app (production and tests alike).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from analytics_lake.errors import LakeError
from gateway import appkeys
from gateway.app import create_app
from gateway.errors import ConfigError, FleetgateError
from gateway.http.protocol import LINGER_S, EdgeLimits, EdgeServer
from gateway.observability.logging import setup_logging
from gateway.settings import Settings

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 10.0  # in-flight requests get this long to finish on SIGTERM


class GatewayRunner(web.AppRunner):
    """An AppRunner serving through EdgeServer: header deadline, keep-alive timeout, connection cap.

    Client disconnects cancel their handler (`handler_cancellation`); aiohttp's own access
    logger is off (the edge middleware writes the access log).
    """

    def __init__(self, app: web.Application, settings: Settings, **kwargs: Any) -> None:
        kwargs.setdefault("shutdown_timeout", SHUTDOWN_TIMEOUT_S)
        super().__init__(app, handler_cancellation=True, access_log=None,
                         keepalive_timeout=settings.keepalive_timeout_s,
                         lingering_time=min(LINGER_S, settings.body_read_timeout_s), **kwargs)
        self._settings = settings

    async def _make_server(self) -> EdgeServer:
        plain = await super()._make_server()  # runs the app's startup, then builds aiohttp's Server
        limits = EdgeLimits(header_timeout_s=self._settings.header_read_timeout_s,
                            max_connections=self._settings.max_connections,
                            access_log=self.app.get(appkeys.ACCESS_LOG))
        return EdgeServer(plain.request_handler, request_factory=plain.request_factory,
                          handler_cancellation=plain.handler_cancellation, loop=asyncio.get_running_loop(),
                          limits=limits, **plain._kwargs)


@contextlib.asynccontextmanager
async def serving(app: web.Application, settings: Settings, *, host: str | None = None, port: int | None = None,
                  reuse_port: bool = False) -> AsyncIterator[GatewayRunner]:
    """Serve `app` on host:port (default: from settings) until the block exits, then shut down gracefully."""
    runner = GatewayRunner(app, settings)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host or settings.host, settings.port if port is None else port,
                           reuse_port=reuse_port or None)
        await site.start()
        yield runner
    finally:
        await runner.cleanup()


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        return
    uvloop.install() if hasattr(uvloop, "install") else None


async def _serve_until_signal(settings: Settings, worker_id: str, reuse_port: bool,
                              ready: Callable[[], None] | None = None) -> None:
    app = create_app(settings, worker_id=worker_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serving(app, settings, reuse_port=reuse_port):
        log.info("gateway %s listening on %s:%d", worker_id, settings.host, settings.port)
        if ready is not None:
            ready()
        await stop.wait()
        log.info("gateway %s stopping", worker_id)


def run_worker(settings: Settings, index: int = 0, *, reuse_port: bool = False,
               ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM (blocking); `ready` is called once the port is served."""
    install_uvloop()
    asyncio.run(_serve_until_signal(settings, f"gw{settings.port}-{index}", reuse_port, ready))


def _worker_main(settings: Settings, index: int, ready: Any) -> None:  # ready: multiprocessing.Event
    setup_logging(settings, worker=index)
    try:
        run_worker(settings, index, reuse_port=True, ready=ready.set)
    except (FleetgateError, LakeError, OSError) as e:  # a locked spool, a port in use: one line, no traceback
        log.error("worker %d could not start: %s", index, getattr(e, "message", None) or e)
        sys.exit(EXIT_START_FAILED)


EXIT_START_FAILED = 1


class StartFailed(FleetgateError):
    """A gateway worker could not start (its log line says why)."""

    status = 500
    code = "start_failed"


def serve(settings: Settings) -> None:
    """Run `settings.workers` processes on one port; restart a worker that dies.

    Raises:
        ConfigError: several workers without Redis (each would hold its own budgets and rate limits).
    """
    if settings.workers > 1 and not settings.redis_url:
        raise ConfigError(f"setting workers={settings.workers} needs redis_url: without Redis, budgets and rate "
                          "limits hold per process, so N workers would allow N times each; use workers=1")
    if settings.workers == 1:
        run_worker(settings)
        return
    metrics_dir = tempfile.mkdtemp(prefix="fleetgate-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    ctx = multiprocessing.get_context("spawn")
    procs: dict[int, tuple[multiprocessing.Process, Any]] = {}
    stopping = False

    def start(index: int) -> None:
        ready = ctx.Event()
        proc = ctx.Process(target=_worker_main, args=(settings, index, ready), name=f"fleetgate-worker-{index}")
        proc.start()
        procs[index] = (proc, ready)

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc, _ in procs.values():
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for i in range(settings.workers):
            start(i)
        while not stopping:
            for index, (proc, ready) in list(procs.items()):
                if proc.is_alive() or stopping:
                    continue
                if not ready.is_set():
                    # It never served: starting it again would fail the same way, forever.
                    stop(signal.SIGTERM, None)
                    raise StartFailed(f"gateway worker {index} could not start (exit code {proc.exitcode}); "
                                      "its log line above says why")
                log.warning("worker %d exited with %s; restarting", index, proc.exitcode)
                start(index)
            time.sleep(0.5)
    finally:
        for proc, _ in procs.values():
            proc.join(15)
            if proc.is_alive():
                proc.kill()
        shutil.rmtree(metrics_dir, ignore_errors=True)
