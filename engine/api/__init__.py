"""The node's HTTP API, its web console, metrics and support snapshots (issue 17)."""
