"""The node process: the modules it runs, and its systemd unit."""
