"""The usage lake: sinks that make usage events durable, Parquet on disk or S3, compaction, DuckDB queries.

Headless: imports neither aiohttp nor Textual (the gateway and opsctl depend on it, not the reverse).
"""
