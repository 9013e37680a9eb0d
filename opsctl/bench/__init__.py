"""Load generator for OpenAI-compatible endpoints (`opsctl bench`, `make bench`).

Closed or open loop over one pooled aiohttp session; exact percentiles from all samples.
"""

from opsctl.bench.config import BenchConfig, Endpoint
from opsctl.bench.report import table_rows
from opsctl.bench.runner import run_bench, run_bench_sync
from opsctl.bench.stats import BenchResult, percentile, summarize_ms

__all__ = [
    "BenchConfig",
    "BenchResult",
    "Endpoint",
    "percentile",
    "run_bench",
    "run_bench_sync",
    "summarize_ms",
    "table_rows",
]
