"""Benchmarks: the mailwarden listener against HAProxy on the same machine, same backend and
same load generator. Run `python -m bench.listener_vs_haproxy --help`."""
