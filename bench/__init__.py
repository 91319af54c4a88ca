"""Benchmarks that measure Quarry from the outside, through its HTTP API."""
