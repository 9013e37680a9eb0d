"""Synthetic usage events for benchmarks, demos and tests: realistic shape, deterministic by seed.

Large tables are generated inside DuckDB (no per-row Python), small event lists as plain dicts.
"""

from __future__ import annotations

import random
import uuid

import duckdb
import pyarrow as pa

from analytics_lake.schema import USAGE_SCHEMA

MODELS = ("llama-3.1-8b", "llama-3.1-70b", "qwen2.5-32b", "mistral-7b", "embed-small")
ERRORS = ("upstream_error", "rate_limit_exceeded", "insufficient_quota", "upstream_timeout")


def make_event(ts_us: int, *, org: str = "org-1", key: str = "key-1", model: str = MODELS[0],
               status: int = 200, request_id: str | None = None, rng: random.Random | None = None) -> dict:
    """One usage event dict with exactly the schema's keys."""
    rng = rng or random.Random()
    prompt, completion = rng.randint(10, 2000), rng.randint(1, 800)
    latency = rng.uniform(50, 4000)
    return {
        "request_id": request_id or uuid.uuid4().hex, "ts": ts_us, "org_id": org, "key_id": key,
        "user_id": None, "model": model, "served_model": model, "environment": "production",
        "endpoint": "http://10.0.0.7:8000", "release": "stable", "status": status,
        "error_type": None if status < 400 else "upstream_error", "stream": rng.random() < 0.5,
        "prompt_tokens": prompt, "completion_tokens": completion, "cost_micros": prompt * 3 + completion * 15,
        "latency_ms": latency, "ttft_ms": latency / 10, "upstream_ms": latency - 0.4, "gateway_overhead_ms": 0.4,
    }


def synthetic_table(rows: int, *, start_us: int, span_hours: int = 24 * 7, orgs: int = 20, keys: int = 400,
                    seed: int = 0, offset: int = 0) -> pa.Table:
    """`rows` events spread evenly over `span_hours` from `start_us`, sorted by ts.

    `offset` shifts row numbers so that several calls produce distinct request_ids.
    """
    span_us = span_hours * 3_600_000_000
    models = "[" + ", ".join(f"'{m}'" for m in MODELS) + "]"
    errors = "[" + ", ".join(f"'{e}'" for e in ERRORS) + "]"
    con = duckdb.connect()
    try:
        con.execute(f"SELECT setseed({(seed % 1000) / 1000})").fetchall()
        table = con.sql(f"""
            WITH base AS (
                SELECT i, random() AS r1, random() AS r2, random() AS r3, random() AS r4
                FROM range({offset}, {offset + rows}) t(i)
            )
            SELECT md5(i::VARCHAR || '-{seed}') AS request_id,
                   make_timestamptz({start_us} + (i - {offset}) * {span_us // max(rows, 1)}) AS ts,
                   'org-' || (i % {orgs}) AS org_id,
                   'key-' || (i % {keys}) AS key_id,
                   NULL::VARCHAR AS user_id,
                   {models}[1 + (hash(i) % {len(MODELS)})::INT] AS model,
                   {models}[1 + (hash(i) % {len(MODELS)})::INT] AS served_model,
                   'production' AS environment,
                   'http://10.0.0.' || (i % 4) || ':8000' AS endpoint,
                   CASE WHEN r1 < 0.1 THEN 'canary' ELSE 'stable' END AS release,
                   CASE WHEN r2 < 0.02 THEN 502 WHEN r2 < 0.03 THEN 429 ELSE 200 END::SMALLINT AS status,
                   CASE WHEN r2 < 0.03 THEN {errors}[1 + (i % {len(ERRORS)})::INT] END AS error_type,
                   r3 < 0.6 AS stream,
                   (10 + r3 * 2000)::BIGINT AS prompt_tokens,
                   (1 + r4 * 800)::BIGINT AS completion_tokens,
                   ((10 + r3 * 2000)::BIGINT * 3 + (1 + r4 * 800)::BIGINT * 15)::BIGINT AS cost_micros,
                   50 + r4 * 4000 + r1 * 300 AS latency_ms,
                   20 + r1 * 400 AS ttft_ms,
                   49.6 + r4 * 4000 + r1 * 300 AS upstream_ms,
                   0.2 + r2 AS gateway_overhead_ms
            FROM base
        """).to_arrow_table()
    finally:
        con.close()
    return table.cast(USAGE_SCHEMA)
