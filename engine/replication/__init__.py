"""The replication streams: the primary's replicator, the secondary's receiver, the copies a
node serves or receives."""
