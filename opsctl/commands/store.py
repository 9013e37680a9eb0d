"""`opsctl store migrate`: bring the registry store's schema up to this Fleetgate's version.

The gateway migrates at start too (under a cross-process lock); this command lets a deployment run
migrations once, before the new pods start (the gateway chart's pre-upgrade Job runs it).
"""

from __future__ import annotations

import asyncio

from opsctl.common import (
    EXIT_FAILED,
    CliError,
    ConfigOpt,
    Output,
    OutputOpt,
    handle_errors,
    load_cli_settings,
    new_app,
    render,
)

store_app = new_app("The registry store (SQLite or PostgreSQL).")


@store_app.command("migrate")
@handle_errors
def store_migrate(output: OutputOpt = Output.table, config: ConfigOpt = None) -> None:
    """Apply pending schema migrations to the store named by `database_url` (FLEETGATE_DATABASE_URL).

    Exits 0 when the schema is current (also when nothing was pending), 1 when the database is
    unreachable or refused the work, 2 on bad settings or a database migrated by a newer Fleetgate.
    """
    settings = load_cli_settings(config)
    from gateway.routing.registry import STORE_ERRORS

    try:
        result = asyncio.run(_migrate(settings.database_url))
    except STORE_ERRORS as e:
        raise CliError(f"migrating the store failed: {type(e).__name__}: {e}", EXIT_FAILED) from e
    render(result, output)


async def _migrate(database_url: str) -> dict:
    import logging

    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)  # its retry warnings: the error below says it once
    from gateway.store import open_database
    from gateway.store.migrations import apply_migrations, current_version
    from gateway.store.rows import encode_time
    from gateway.store.sql import utc_now

    db = open_database(database_url)
    await db.open()
    try:
        applied = await apply_migrations(db, now=encode_time(utc_now()))
        version = await current_version(db)
    finally:
        await db.close()
    return {"from_version": min(applied) - 1 if applied else version, "to_version": version, "applied": applied}
