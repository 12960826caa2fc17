"""The replication protocol: every frame, item code and body layout, and the one handshake
both ends use."""
