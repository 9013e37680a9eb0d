"""`opsctl lake status`: how fresh the lake is (issue 13, helper D)."""

from __future__ import annotations

from opsctl.commands.lake import lake_app  # noqa: F401 - commands register on it
