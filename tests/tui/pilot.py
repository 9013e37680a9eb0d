"""Waiting inside Pilot tests: let the app run until something holds, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from textual.widgets.data_table import CellDoesNotExist

DEADLINE_S = 15.0


async def until(pilot: Any, predicate: Callable[[], Any], what: str = "condition", *,
                timeout: float = DEADLINE_S) -> Any:
    """Let the app run until `predicate()` is truthy; its value. A table cell not drawn yet counts as false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except CellDoesNotExist:
            value = None
        if value:
            return value
        await pilot.pause(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


async def settle(pilot: Any, text: str, *, timeout: float = 5.0) -> None:
    """Until the frame shows `text`, then until animations finish (before a snapshot)."""
    await until(pilot, lambda: text in pilot.app.export_screenshot(), f"the frame to show {text!r}", timeout=timeout)
    await pilot.wait_for_scheduled_animations()
