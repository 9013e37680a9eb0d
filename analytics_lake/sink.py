"""The seam between the gateway and the lake: every usage sink has this shape.

The gateway calls `emit` once per request before the client gets the last byte of its response.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class UsageSink(Protocol):
    """Durable hand-off of usage events; Parquet writing happens behind it."""

    async def start(self) -> None:
        """Open files/connections and start background work (replaying leftovers, if any)."""

    async def emit(self, event: dict) -> None:
        """Return once `event` is handed to the OS (spool: written with os.write; stream: XADD acked).

        Raises:
            LakeInputError: the event does not have exactly the schema's keys.
            LakeError: the sink is closed or its storage failed.
        """

    async def flush(self) -> None:
        """Write everything emitted so far to Parquet now (a no-op where another process does it)."""

    async def lag_s(self) -> float:
        """Seconds since the oldest event not yet written to Parquet was emitted; 0 when none waits."""

    async def close(self) -> None:
        """Flush what can be flushed and release resources; nothing emitted is lost."""
