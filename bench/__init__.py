"""Benchmarks for the quality bars of SPEC §10; results and commands in docs/benchmarks.md."""
