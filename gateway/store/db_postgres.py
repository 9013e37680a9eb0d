"""PostgreSQL behind the `Database` seam: psycopg 3 async with a small connection pool.

Connections run in autocommit; `transaction()` pins one pooled connection for a block.
Error messages name the host and database, never the password.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from urllib.parse import urlsplit

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.store.db import (
    ForeignKeyViolation,
    IntegrityViolation,
    Params,
    Row,
    StoreUnavailable,
    UniqueViolation,
)


def to_pyformat(sql: str) -> str:
    """Turn the store's `?` placeholders into psycopg's `%s` (escaping literal `%`)."""
    return sql.replace("%", "%%").replace("?", "%s")


def redact(url: str) -> str:
    """`postgresql://user:secret@host:5432/db` → `postgresql://user@host:5432/db`."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}{parts.path}"


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except psycopg.errors.UniqueViolation as e:
        name = e.diag.constraint_name or ""
        raise UniqueViolation(f"unique constraint {name} failed", constraint=name) from e
    except psycopg.errors.ForeignKeyViolation as e:
        name = e.diag.constraint_name or ""
        raise ForeignKeyViolation(f"foreign key constraint {name} failed", constraint=name) from e
    except psycopg.IntegrityError as e:
        name = e.diag.constraint_name or ""
        raise IntegrityViolation(f"constraint {name} failed", constraint=name) from e
    except psycopg.OperationalError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StoreUnavailable(f"PostgreSQL store unavailable: {first_line}") from e


class _Session:
    def __init__(self, conn: psycopg.AsyncConnection[Row]) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        with _translated():
            cursor = await self._conn.execute(to_pyformat(sql), params)
            return cursor.rowcount

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        with _translated():
            cursor = await self._conn.execute(to_pyformat(sql), params)
            return await cursor.fetchone()

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        with _translated():
            cursor = await self._conn.execute(to_pyformat(sql), params)
            return await cursor.fetchall()


class PostgresDatabase:
    """An `AsyncConnectionPool` opened explicitly, with a short wait for connections."""

    dialect = "postgresql"

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8, timeout_s: float = 5.0) -> None:
        self._url = url
        self._min_size = min_size
        self._max_size = max_size
        self._timeout_s = timeout_s
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Row]] | None = None

    @property
    def display_url(self) -> str:
        return redact(self._url)

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Row]] = AsyncConnectionPool(
            self._url,
            min_size=self._min_size,
            max_size=self._max_size,
            timeout=self._timeout_s,
            open=False,
            name="fleetgate-store",
            kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": max(1, int(self._timeout_s))},
            # A quick check on checkout survives a PostgreSQL restart without failing a request.
            check=AsyncConnectionPool.check_connection,
        )
        try:
            await pool.open(wait=True, timeout=self._timeout_s)
        except PoolTimeout as e:
            await pool.close()
            raise StoreUnavailable(
                f"cannot connect to PostgreSQL at {self.display_url} within {self._timeout_s:g}s"
            ) from e
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Row]]:
        if self._pool is None:
            raise StoreUnavailable("PostgreSQL store is not open")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as e:
            raise StoreUnavailable(f"no PostgreSQL connection available within {self._timeout_s:g}s") from e

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self._connection() as conn:
            return await _Session(conn).execute(sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        async with self._connection() as conn:
            return await _Session(conn).fetchone(sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._connection() as conn:
            return await _Session(conn).fetchall(sql, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Session]:
        async with self._connection() as conn:
            with _translated():
                async with conn.transaction():
                    yield _Session(conn)
