"""Virtual IP and load-balancing rules (the only pyroute2 and nftables user). Decides nothing:
it does what the module state machine asks."""
