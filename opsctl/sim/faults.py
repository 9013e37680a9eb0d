"""Fault injection for the simulator: seeded errors, hangs and garbage bodies, slow start, crash after N.

One RNG draw per inference request (only when a rate is set), so a seed replays exactly.
"""

from __future__ import annotations

import asyncio
import enum
import random

from opsctl.sim.config import SimConfig


class Fault(enum.Enum):
    NONE = "none"
    ERROR = "error"  # answer 500
    HANG = "hang"  # never answer
    GARBAGE = "garbage"  # a 200 whose body is not JSON (streams: a line that is not an SSE event)


class FaultInjector:
    """Decides, per request, whether the simulated engine misbehaves."""

    __slots__ = ("_rng", "_error_rate", "_hang_rate", "_garbage_rate", "_crash_after", "_slow_start_s", "_timer",
                 "requests", "warming", "crashed")

    def __init__(self, config: SimConfig) -> None:
        self._rng = random.Random(config.seed)
        self._error_rate = config.error_rate
        self._hang_rate = config.hang_rate
        self._garbage_rate = config.garbage_rate
        self._crash_after = config.crash_after
        self._slow_start_s = config.slow_start_s
        self._timer: asyncio.TimerHandle | None = None
        self.requests = 0
        self.warming = config.slow_start_s > 0
        self.crashed = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin the slow-start window now (called when the server starts)."""
        if self._slow_start_s > 0:
            self.warming = True
            self._timer = loop.call_later(self._slow_start_s, self._warmed_up)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _warmed_up(self) -> None:
        self.warming = False
        self._timer = None

    def unavailable(self) -> str | None:
        """Why the engine cannot answer right now, or None when it can."""
        if self.crashed:
            return "engine is dead (simulated crash)"
        if self.warming:
            return "engine is starting (simulated slow start)"
        return None

    def count_request(self) -> bool:
        """Count one inference request; True when it is the last before the simulated crash."""
        self.requests += 1
        if self._crash_after is not None and self.requests >= self._crash_after:
            self.crashed = True
            return True
        return False

    def draw(self) -> Fault:
        if self._error_rate == 0.0 and self._hang_rate == 0.0 and self._garbage_rate == 0.0:
            return Fault.NONE
        r = self._rng.random()  # bands in a fixed order, so adding a rate keeps old seeds' patterns
        if r < self._error_rate:
            return Fault.ERROR
        if r < self._error_rate + self._hang_rate:
            return Fault.HANG
        if r < self._error_rate + self._hang_rate + self._garbage_rate:
            return Fault.GARBAGE
        return Fault.NONE
