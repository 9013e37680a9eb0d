"""The read-only SQL guard: forbidden statements and file access refused, SELECTs over usage run."""

from __future__ import annotations

import pytest

from analytics_lake.errors import LakeInputError, QueryRefused
from analytics_lake.location import LakeConfig
from analytics_lake.query import LakeQuery
from analytics_lake.sql_guard import check_read_only
from analytics_lake.synthetic import make_event
from analytics_lake.writer import write_batch

FORBIDDEN = [
    "INSERT INTO usage SELECT * FROM usage",
    "UPDATE usage SET status = 200",
    "DELETE FROM usage",
    "CREATE TABLE t AS SELECT * FROM usage",
    "DROP VIEW usage",
    "ALTER VIEW usage RENAME TO u",
    "COPY (SELECT * FROM usage) TO '/tmp/out.csv'",
    "ATTACH '/tmp/other.db' AS o",
    "DETACH o",
    "INSTALL httpfs",
    "LOAD httpfs",
    "PRAGMA database_list",
    "SET threads = 1",
    "EXPORT DATABASE '/tmp/dump'",
    "IMPORT DATABASE '/tmp/dump'",
    "CALL pragma_version()",
    "SELECT 1; SELECT 2",
    "SELECT * FROM usage; DROP VIEW usage",
    "SELECT * FROM read_parquet('/tmp/*.parquet')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('/etc/passwd')",
    "SELECT * FROM read_json('/etc/x.json')",
    "SELECT * FROM parquet_scan('x.parquet')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/passwd')",
    "SELECT * FROM 'x.csv'",
    'SELECT * FROM "/etc/passwd.csv"',
    "SELECT * FROM _usage_source",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM duckdb_settings()",
    "SELECT getenv('HOME')",
    "WITH a AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM a",
    "SELECT * FROM usage WHERE org_id IN (SELECT * FROM read_csv('/etc/passwd'))",
    "SUMMARIZE SELECT * FROM read_csv('/etc/passwd')",
    "EXPLAIN SELECT * FROM read_csv('/etc/passwd')",
    "",
]
ALLOWED = [
    "SELECT count(*) AS n FROM usage",
    "select org_id, sum(cost_micros) from usage group by all;",
    "WITH o AS (SELECT org_id FROM usage) SELECT count(*) AS n FROM o",
    "FROM usage SELECT count(*) AS n",
    "SELECT 'read_csv' AS just_text FROM usage LIMIT 1",
    "DESCRIBE usage",
    "SUMMARIZE usage",
    "EXPLAIN SELECT count(*) FROM usage",
    "SELECT * FROM range(3)",
]


@pytest.mark.parametrize("query", FORBIDDEN)
def test_forbidden_sql_is_refused(query):
    with pytest.raises(QueryRefused):
        check_read_only(query)


def test_invalid_sql_is_bad_input():
    with pytest.raises(LakeInputError):
        check_read_only("SELEC 1 FROM usage")


@pytest.fixture
def lake(tmp_path):
    config = LakeConfig(f"file://{tmp_path}/lake")
    write_batch(config, [make_event(1_767_225_600_000_000 + i, org=f"org-{i % 2}") for i in range(20)], writer_id="w")
    return config


@pytest.mark.parametrize("query", ALLOWED)
def test_allowed_selects_run_over_usage(lake, query):
    with LakeQuery(lake) as q:
        assert q.sql(query).num_rows >= 1


def test_file_access_is_off_even_past_the_guard(lake, tmp_path):
    """Defence in depth: the query connection itself cannot read files outside the lake."""
    (tmp_path / "secret.csv").write_text("a\n1\n")
    with LakeQuery(lake) as q:
        q.sql("SELECT 1 FROM usage LIMIT 1")
        import duckdb

        with pytest.raises(duckdb.Error):
            q._con.sql(f"SELECT * FROM read_csv('{tmp_path}/secret.csv')").fetchall()
        with pytest.raises(duckdb.Error):
            q._con.sql("SET enable_external_access = true").fetchall()
