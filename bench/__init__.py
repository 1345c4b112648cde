"""Benchmarks (not tests): ``python -m bench.routing``."""
