"""Load generator for OpenAI-compatible endpoints (`opsctl bench`, `make bench`).

Closed or open loop over one pooled aiohttp session; exact percentiles from all samples.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# name -> submodule; loaded on first use, so `opsctl --help` (which needs only
# opsctl.bench.config for the options) pays neither for aiohttp nor for the statistics.
_EXPORTS = {
    "BenchConfig": "config",
    "Endpoint": "config",
    "BenchResult": "stats",
    "Progress": "stats",
    "percentile": "stats",
    "summarize_ms": "stats",
    "table_rows": "report",
    "run_bench": "runner",
    "run_bench_sync": "runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"opsctl.bench.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
