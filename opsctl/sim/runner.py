"""Serve the simulator as a process: uvloop when available, clean exit on SIGTERM/SIGINT.

A simulated crash (`crash_after`) ends the process abruptly with CRASH_EXIT_CODE, like a dead pod.
"""

from __future__ import annotations

import asyncio
import os
import sys

from aiohttp import web

from opsctl.sim.config import SimConfig
from opsctl.sim.server import create_sim_app

CRASH_EXIT_CODE = 70
CRASH_FLUSH_S = 0.05  # let the last answer leave the socket buffer before dying
SHUTDOWN_TIMEOUT_S = 5.0


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _crash(config: SimConfig) -> None:
    sys.stderr.write(f"opsctl sim: simulated crash after {config.crash_after} requests\n")
    sys.stderr.flush()
    asyncio.get_running_loop().call_later(CRASH_FLUSH_S, os._exit, CRASH_EXIT_CODE)


def run_sim(config: SimConfig) -> None:
    """Serve `config.model` on host:port until SIGTERM/SIGINT (returns) or a simulated crash (exits)."""
    app = create_sim_app(config, on_crash=lambda: _crash(config))

    def announce(_: str) -> None:
        names = ", ".join(config.served_names)
        sys.stderr.write(f"opsctl sim: serving {names} on http://{config.host}:{config.port}\n")
        sys.stderr.flush()

    web.run_app(
        app,
        host=config.host,
        port=config.port,
        loop=_new_loop(),
        access_log=None,
        print=announce,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        handler_cancellation=True,
        handle_signals=True,
    )
