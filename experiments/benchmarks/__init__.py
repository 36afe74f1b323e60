"""Benchmarks: each is `python -m experiments.benchmarks.NAME`; they print
medians and ratios from one run."""
