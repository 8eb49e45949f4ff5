"""Benchmark tools: the closed-loop client, the floor and naive reference servers, the matrix.

Callers of the service, not part of it: nothing in `reaseq.service` imports this package.
"""
