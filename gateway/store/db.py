"""The tiny async database seam under the SQL store: SQLite and PostgreSQL look the same here.

Queries are written once with `?` placeholders; each adapter translates them and maps its
driver's integrity and connection errors to the types below.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from gateway.errors import Conflict, ServiceUnavailable

Row = dict[str, Any]
Params = Sequence[Any]


class StoreUnavailable(ServiceUnavailable):
    """The database cannot be reached or refused the work for operational reasons."""

    code = "store_unavailable"


class IntegrityViolation(Conflict):
    """A constraint refused a write; the store turns it into a message naming the thing."""

    def __init__(self, message: str, *, constraint: str = "") -> None:
        super().__init__(message)
        self.constraint = constraint


class UniqueViolation(IntegrityViolation):
    pass


class ForeignKeyViolation(IntegrityViolation):
    pass


class Session(Protocol):
    """Runs statements; inside `Database.transaction()` they share one transaction."""

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement and return the number of rows it changed."""

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...


class Database(Session, Protocol):
    """A connection (SQLite) or pool (PostgreSQL); statements outside a transaction autocommit."""

    dialect: str  # "sqlite" | "postgresql"

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def transaction(self) -> AbstractAsyncContextManager[Session]:
        """A write transaction: commits on exit, rolls back if the block raises."""
