"""Read-only guard for ad-hoc SQL: one SELECT/WITH (or EXPLAIN/DESCRIBE/SUMMARIZE) over `usage` only.

Uses DuckDB's own parser (statement types, then the serialized syntax tree), not regexes over text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import duckdb
import orjson

from analytics_lake.errors import LakeInputError, QueryRefused

ALLOWED_TABLES = frozenset({"usage"})
_ALLOWED_TYPES = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})
# table functions that only generate values; everything else (read_*, glob, *_scan, ...) is refused
_ALLOWED_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})
# names refused anywhere they appear as an identifier (belt and braces with the tree walk)
_FILE_FUNCTIONS = frozenset({
    "read_parquet", "parquet_scan", "parquet_metadata", "parquet_schema", "parquet_file_metadata",
    "parquet_kv_metadata", "read_csv", "read_csv_auto", "sniff_csv", "read_json", "read_json_auto",
    "read_json_objects", "read_json_objects_auto", "read_ndjson", "read_ndjson_auto", "read_ndjson_objects",
    "read_text", "read_blob", "glob", "getenv", "iceberg_scan", "delta_scan", "sqlite_scan",
    "postgres_scan", "mysql_scan", "query_table", "query", "read_xlsx", "duckdb_secrets",
})
_EXPLAIN = re.compile(r"^\s*explain(\s+analyze)?\s+", re.IGNORECASE)
_WORD_TOKENS = (duckdb.token_type.identifier, duckdb.token_type.keyword)


def _refuse(message: str) -> None:
    raise QueryRefused(f"query refused: {message}")


def _walk(node: object) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _check_tokens(query: str) -> None:
    tokens = duckdb.tokenize(query)
    for i, (start, kind) in enumerate(tokens):
        if kind not in _WORD_TOKENS:
            continue
        end = tokens[i + 1][0] if i + 1 < len(tokens) else len(query)
        word = query[start:end].strip().strip('"').lower()
        if word in _FILE_FUNCTIONS:
            _refuse(f"{word}() reads files; query the usage view instead")


def _check_tree(query: str, allowed_tables: frozenset[str], con: duckdb.DuckDBPyConnection | None) -> None:
    own = con is None
    con = duckdb.connect() if con is None else con
    try:
        raw = con.execute("SELECT json_serialize_sql(?)", [query]).fetchall()[0][0]
    finally:
        if own:
            con.close()
    tree = orjson.loads(raw)
    if tree.get("error"):
        _refuse(tree.get("error_message") or "only plain SELECT queries are allowed")
    nodes = list(_walk(tree))
    ctes = {entry["key"].lower() for n in nodes if isinstance(n.get("cte_map"), dict)
            for entry in n["cte_map"].get("map", []) if isinstance(entry, dict) and "key" in entry}
    for n in nodes:
        kind = n.get("type")
        if kind == "BASE_TABLE":
            name = str(n.get("table_name", "")).lower()
            if n.get("schema_name") or n.get("catalog_name") or name not in allowed_tables | ctes:
                _refuse(f"only the usage view can be queried, not {n.get('table_name')!r}")
        elif kind == "TABLE_FUNCTION":
            name = str(n.get("function", {}).get("function_name", "")).lower()
            if name not in _ALLOWED_TABLE_FUNCTIONS:
                _refuse(f"table function {name}() is not allowed; query the usage view instead")
        elif n.get("class") == "FUNCTION" and str(n.get("function_name", "")).lower() in _FILE_FUNCTIONS:
            _refuse(f"{n['function_name']}() is not allowed")


def check_read_only(query: str, *, allowed_tables: frozenset[str] = ALLOWED_TABLES,
                    con: duckdb.DuckDBPyConnection | None = None) -> str:
    """Return `query` (stripped of a trailing ';') if it is one read-only query over `allowed_tables`.

    `con` parses it (json_serialize_sql only parses: nothing runs); without one a new connection is opened,
    which costs ~35 ms here, more than most queries over the rollups.

    Raises:
        QueryRefused: anything that writes, reads files, changes settings, or is not a single statement.
        LakeInputError: the text is not valid SQL.
    """
    text = query.strip().rstrip(";").strip()
    if not text:
        _refuse("empty query")
    try:
        statements = duckdb.extract_statements(text)
    except duckdb.Error as e:
        raise LakeInputError(f"invalid SQL: {str(e).splitlines()[0]}") from e
    if len(statements) != 1:
        _refuse("exactly one statement is allowed")
    kind = statements[0].type
    if kind not in _ALLOWED_TYPES:
        _refuse(f"{kind.name} statements are not allowed: the lake is read-only (SELECT/WITH only)")
    _check_tokens(text)
    _check_tree(_EXPLAIN.sub("", text, count=1) if kind == duckdb.StatementType.EXPLAIN else text, allowed_tables,
                con)
    return text
