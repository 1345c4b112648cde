"""Benchmarks (not tests): ``python -m bench.run`` (``make bench``); see bench/README.md."""
