"""Benchmarks: one command each (`python -m benchmarks.<name>`), figures into BENCHMARKS.md."""
