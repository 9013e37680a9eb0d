"""`opsctl store migrate` against SQLite and a real PostgreSQL: applies once, then reports the schema current."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gateway.store.migrations import latest_version
from tests.support import free_port, repo_root


def migrate(database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLEETGATE_DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "opsctl", "store", "migrate", *args], capture_output=True,
                          text=True, env=env, cwd=repo_root(), timeout=60)


def check_twice(database_url: str) -> None:
    first = migrate(database_url, "--output", "json")
    assert first.returncode == 0, first.stderr
    newest = latest_version()
    assert json.loads(first.stdout) == {"from_version": 0, "to_version": newest,
                                        "applied": list(range(1, newest + 1))}
    again = migrate(database_url, "--output", "json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"from_version": newest, "to_version": newest, "applied": []}


def test_migrates_a_new_sqlite_store_once(tmp_path):
    check_twice(f"sqlite:///{tmp_path}/store.db")


@pytest.mark.postgres
def test_migrates_a_new_postgres_database_once(postgres_url):
    check_twice(postgres_url)


def test_an_unreachable_database_is_one_line_and_exit_1():
    done = migrate(f"postgresql://fleet:hunter2secret@127.0.0.1:{free_port()}/none")
    assert done.returncode == 1
    assert done.stderr.startswith("error: migrating the store failed") and done.stderr.count("\n") == 1
    assert "hunter2secret" not in done.stderr


@pytest.mark.parametrize("url", ["mysql://db/x", "sqlite:", "redis://127.0.0.1/0"])
def test_a_bad_database_url_is_exit_2(url):
    done = migrate(url)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
