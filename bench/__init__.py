"""Reproducible benchmarks: each compares against a baseline measured in the same run and
prints JSON. Not part of the test run."""
