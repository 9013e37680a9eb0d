"""Export jobs (a mixin of `SqlStore`): `/analytics/v1/exports` jobs that survive restarts (issue 13, helper B)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from gateway.store.db import Database


class ExportStore:
    """The export-job part of `SqlStore` (which provides `_db` and `_now`)."""

    _db: Database
    _now: Callable[[], datetime]
