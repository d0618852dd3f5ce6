"""Benchmarks of the pack: speed (bench_*.py, `make bench`), soak tests and ToyWorld efficacy."""
