"""Benchmarks.

- ``python -m bench.fanout``: SSE fan-out against nginx+nchan and Pushpin (docs/benchmarks.md).
- ``python -m bench.post_rate``: accepted comments per second through one comment service.
- ``bench/e2e_latency.py``: the first POST -> SSE probe against a running system.
"""
