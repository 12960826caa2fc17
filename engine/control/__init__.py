"""How commands reach a running process: the Unix control sockets."""
