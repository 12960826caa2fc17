"""A throwaway two-node cluster on one machine, and the demo that runs on it."""
