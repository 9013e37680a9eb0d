"""Fixtures for the TUI's tests: a real stack per module, and the app on a live or replayed source."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.tui.stack import FleetStack, start_stack

SIZE = (120, 40)  # every Pilot test and snapshot runs at 120×40


@pytest.fixture(scope="module")
def fleet_stack(tmp_path_factory) -> Iterator[FleetStack]:
    """`opsctl up` on a free port with its own state dir (shared by one module's tests: they make
    uniquely named objects and undo what they change)."""
    stack = start_stack(tmp_path_factory.mktemp("stack") / "state")
    try:
        yield stack
    finally:
        stack.stop()
