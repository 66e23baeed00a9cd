"""Benchmarks: `make bench` runs speed_ratios."""
