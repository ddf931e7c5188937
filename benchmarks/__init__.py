"""Benchmarks: throughput, latency, cold start, memory and accuracy per backend and precision.

``pneumo bench`` (benchmarks.cli) runs every backend x precision x batch
combination this machine supports, says which it skipped and why, stamps the
result with the device it ran on and writes ``bench.json`` (one schema for
every device), ``bench.md`` and PNG plots under
``benchmarks/results/<device>/<date>/``.

This package must stay cheap to import: ``python -m benchmarks.coldstart``
measures a cold start from a fresh interpreter, so nothing heavy (and nothing
of ours) is imported here.
"""

#: Bumped when a field of bench.json changes meaning or disappears.
BENCH_SCHEMA = "pneumo-bench/1"
