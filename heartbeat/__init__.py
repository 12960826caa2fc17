"""Membership: authenticated heartbeats, the failure detector and split-brain witness checks.
Touches neither the filesystem nor addresses."""
