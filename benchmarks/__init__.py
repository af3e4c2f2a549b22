"""Benchmarks: this package beside natcap taskgraph 0.11.2 (see docs/performance.md)."""
