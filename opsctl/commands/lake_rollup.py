"""`opsctl lake rollup [--rebuild]`: hourly rollups (issue 13, lead)."""

from __future__ import annotations

from opsctl.commands.lake import lake_app  # noqa: F401 - commands register on it
