"""`opsctl apply`, `opsctl export`, `opsctl reconcile`: declarative configuration (being written for issue 12)."""

from __future__ import annotations
