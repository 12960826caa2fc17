"""Replication, decisions and the node process: the composition root that drives the other
packages (none of them imports this one)."""

__version__ = "0.1.0"
