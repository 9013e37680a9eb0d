"""Benchmark harnesses run by `make bench`; numbers go to docs/benchmarks.md."""
