"""Bringing a returning copy up to date: journals, resync plans, the resync and verify."""
