"""Benchmarks. Each prints ratios against a baseline run in the same process and records its
figures in ``bench/results.json`` (see ``bench.results``)."""
