"""Gatehouse benchmarks (`make bench`, i.e. `bench/run.py`). See docs/benchmarks.md."""
