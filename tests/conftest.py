"""Shared fixtures: real Redis, PostgreSQL and S3 servers, isolated from the developer's config."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.support import PostgresDatabase, S3Server, started_redis, unavailable


@pytest.fixture(autouse=True)
def _no_developer_config(monkeypatch, tmp_path):
    """No test reads the developer's fleetgate.toml or FLEETGATE_* env."""
    for key in list(os.environ):
        if key.startswith("FLEETGATE_") and key not in ("FLEETGATE_REQUIRE_SERVICES", "FLEETGATE_TEST_POSTGRES"):
            monkeypatch.delenv(key)
    # Nor the developer's `opsctl login` (~/.config/fleetgate/credentials.json).
    monkeypatch.setenv("FLEETGATE_CREDENTIALS", str(tmp_path / "credentials.json"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def redis_server():
    server = started_redis()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server):
    """A clean Redis for one test (the private server is flushed after it)."""
    if redis_server.proc is None:
        redis_server.start()
    yield redis_server.url
    if redis_server.proc is None:
        redis_server.start()
    redis_server.flushall()


@pytest.fixture(scope="session")
def postgres_database():
    db = PostgresDatabase()
    try:
        db.create()
    except Exception as e:  # noqa: BLE001 - any connection failure means "no PostgreSQL here"
        unavailable(f"PostgreSQL not reachable at {db.admin_dsn}: {e}")
    yield db
    db.drop()


@pytest.fixture
def postgres_url(postgres_database):
    """A fresh database per test: created here, dropped after."""
    db = PostgresDatabase()
    db.create()
    yield db.url
    db.drop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """The store's URL on each backend in turn: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'fleetgate.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
async def store(database_url):
    """An open, migrated store on `database_url` (so a test using it runs once per backend)."""
    from gateway.store import open_store

    store = open_store(database_url)
    await store.open()
    yield store
    await store.close()


@pytest.fixture(scope="session")
def s3_server():
    try:
        server = S3Server()
        server.start()
    except Exception as e:  # noqa: BLE001
        unavailable(f"moto S3 server could not start: {e}")
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    name = f"fg-{uuid.uuid4().hex[:10]}"
    s3_server.create_bucket(name)
    return name
