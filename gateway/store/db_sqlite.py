"""SQLite behind the `Database` seam: one aiosqlite connection (its own thread, never the loop).

WAL mode lets other processes read while we write; an asyncio lock keeps one task's
transaction from interleaving with another task's statements on the shared connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.store.db import (
    ForeignKeyViolation,
    IntegrityViolation,
    Params,
    Row,
    StoreUnavailable,
    UniqueViolation,
)

MEMORY = ":memory:"
# SQLite extended error names that mean "try again later / the disk", not "your SQL is wrong".
_UNAVAILABLE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_FULL", "SQLITE_READONLY")


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {column[0]: value for column, value in zip(cursor.description, row)}


def _translate(error: sqlite3.Error) -> Exception | None:
    """Map a driver error to the store's types; None for anything unexpected (a bug)."""
    name = getattr(error, "sqlite_errorname", "") or ""
    if isinstance(error, sqlite3.IntegrityError):
        if name in ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"):
            return UniqueViolation(str(error), constraint=str(error))
        if name == "SQLITE_CONSTRAINT_FOREIGNKEY":
            return ForeignKeyViolation(str(error), constraint=str(error))
        return IntegrityViolation(str(error), constraint=str(error))
    if name.startswith(_UNAVAILABLE):
        return StoreUnavailable(f"SQLite store unavailable: {error}")
    return None


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as e:
        mapped = _translate(e)
        if mapped is None:
            raise
        raise mapped from e


class _Session:
    """Statements on the shared connection; the caller holds the database lock."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        with _translated():
            async with self._conn.execute(sql, params) as cursor:
                return cursor.rowcount

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        # Always drain the cursor: a half-read RETURNING statement would keep its write open.
        with _translated():
            return list(await self._conn.execute_fetchall(sql, params))  # type: ignore[arg-type]

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None


class SqliteDatabase:
    """A SQLite file (or `:memory:`) with WAL, foreign keys and a busy timeout."""

    dialect = "sqlite"

    def __init__(self, path: str, *, busy_timeout_ms: int = 5000) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        if self._conn is not None:
            return
        if self.path != MEMORY:
            await asyncio.to_thread(Path(self.path).parent.mkdir, parents=True, exist_ok=True)
        try:
            conn = await aiosqlite.connect(self.path, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"cannot open SQLite database {self.path}: {e}") from e
        conn.row_factory = _dict_row
        session = _Session(conn)
        try:
            # busy_timeout first, so the WAL switch waits for a concurrent opener instead of failing.
            await session.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            await session.execute("PRAGMA foreign_keys = ON")
            await self._enable_wal(session)
            await session.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    async def _enable_wal(self, session: _Session) -> None:
        """Switch to WAL. The switch needs a moment of exclusive access and SQLite may refuse it
        at once (no busy handler) while another process opens the file: retry until busy_timeout."""
        deadline = asyncio.get_running_loop().time() + self._busy_timeout_ms / 1000.0
        delay = 0.01
        while True:
            try:
                await session.fetchall("PRAGMA journal_mode = WAL")
                return
            except StoreUnavailable:
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            async with self._lock:
                await conn.close()

    def _session(self) -> _Session:
        if self._conn is None:
            raise StoreUnavailable("SQLite store is not open")
        return _Session(self._conn)

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self._lock:
            return await self._session().execute(sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        async with self._lock:
            return await self._session().fetchone(sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._lock:
            return await self._session().fetchall(sql, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Session]:
        # IMMEDIATE takes the write lock up front: no deadlock-prone read→write upgrade.
        async with self._lock:
            session = self._session()
            conn = self._conn
            assert conn is not None
            await session.execute("BEGIN IMMEDIATE")
            try:
                yield session
                await session.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    await session.execute("ROLLBACK")
                raise
