"""The usage event: one row per gateway request, success or failure, versioned.

The gateway builds events as plain dicts with exactly these keys (cheap on the hot path);
the lake writer turns batches of them into Arrow/Parquet with `USAGE_SCHEMA`.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

# (name, arrow type, nullable)
USAGE_COLUMNS: tuple[tuple[str, pa.DataType, bool], ...] = (
    ("request_id", pa.string(), False),
    ("ts", pa.timestamp("us", tz="UTC"), False),  # request start, UTC, microseconds
    ("org_id", pa.string(), True),
    ("key_id", pa.string(), True),
    ("user_id", pa.string(), True),
    ("model", pa.string(), True),  # as requested
    ("served_model", pa.string(), True),  # after fallback
    ("environment", pa.string(), True),
    ("endpoint", pa.string(), True),
    ("release", pa.string(), True),
    ("status", pa.int16(), False),  # HTTP status returned to the client (499 = client disconnected)
    ("error_type", pa.string(), True),
    ("stream", pa.bool_(), False),
    ("prompt_tokens", pa.int64(), False),
    ("completion_tokens", pa.int64(), False),
    ("cost_micros", pa.int64(), False),  # integer micro-USD: sums are exact
    ("latency_ms", pa.float64(), False),
    ("ttft_ms", pa.float64(), True),
    ("upstream_ms", pa.float64(), True),
    ("gateway_overhead_ms", pa.float64(), True),
)

USAGE_FIELDS: tuple[str, ...] = tuple(name for name, _, _ in USAGE_COLUMNS)

USAGE_SCHEMA = pa.schema(
    [pa.field(name, typ, nullable=nullable) for name, typ, nullable in USAGE_COLUMNS],
    metadata={b"fleetgate.schema_version": str(SCHEMA_VERSION).encode()},
)

# In an event dict, `ts` is an int of microseconds since the epoch (UTC).
