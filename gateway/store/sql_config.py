"""Declarative configuration: which objects an applied config owns (a mixin of `SqlStore`)."""

from __future__ import annotations


class ConfigStore:
    """Needs `self._db`, `self._now()` from `SqlStore`."""
