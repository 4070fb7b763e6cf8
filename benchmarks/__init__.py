"""Benchmarks: speed and quality measurements, JSON results in benchmarks/results/."""
