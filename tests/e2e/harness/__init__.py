"""The e2e tests' own harness: the entry point (run) and the peer host (peer).

The sandbox, guests and daemon runner live in tools/sandbox, shared with the demo and
the benchmarks; tests import them from there.
"""
