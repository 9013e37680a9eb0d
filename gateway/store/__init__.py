"""The control-plane store: pick SQLite or PostgreSQL from a database URL.

`open_store(url)` returns an unopened `Store`; the caller awaits `.open()` (which migrates).
"""

from __future__ import annotations

from gateway.errors import ConfigError
from gateway.store.base import Store
from gateway.store.db import Database
from gateway.store.sql import SqlStore

SQLITE_SCHEME = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")

__all__ = ["Database", "SqlStore", "Store", "open_database", "open_store"]


def open_database(database_url: str, *, connect_timeout_s: float = 5.0) -> Database:
    """The unopened `Database` adapter for `database_url` (what `open_store` builds on).

    Raises:
        ConfigError: the URL names no supported database.
    """
    # Adapters are imported here so a process only loads the driver it uses.
    if database_url.startswith(SQLITE_SCHEME):
        from gateway.store.db_sqlite import SqliteDatabase

        path = database_url[len(SQLITE_SCHEME):].split("?", 1)[0]
        if not path:
            raise ConfigError(f"database_url {database_url!r} has no path: expected sqlite:///PATH")
        return SqliteDatabase(path, busy_timeout_ms=int(connect_timeout_s * 1000))
    if database_url.startswith(POSTGRES_SCHEMES):
        from gateway.store.db_postgres import PostgresDatabase

        return PostgresDatabase(database_url, timeout_s=connect_timeout_s)
    scheme = database_url.split("://", 1)[0] if "://" in database_url else database_url[:20]
    raise ConfigError(
        f"database_url with scheme {scheme!r} is not supported: expected sqlite:///PATH or postgresql://…"
    )


def open_store(database_url: str, *, connect_timeout_s: float = 5.0) -> Store:
    """Build the store for `database_url` without connecting; the caller awaits `.open()`.

    `sqlite:///rel/path.db`, `sqlite:////abs/path.db` (parent directories are created at
    open), `sqlite:///:memory:` (one process, tests), or `postgresql://…` / `postgres://…`.
    `connect_timeout_s` bounds waiting for a connection (PostgreSQL) or a lock (SQLite).

    Raises:
        ConfigError: the URL names no supported database.
    """
    return SqlStore(open_database(database_url, connect_timeout_s=connect_timeout_s))
