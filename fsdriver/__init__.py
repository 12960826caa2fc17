"""The in-place FUSE passthrough: sees every mutation of a replicated directory and hands it to a
`ReplicationSink` before the application gets its answer. Knows nothing of peers or states."""
