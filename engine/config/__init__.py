"""What the administrator configures and where the node keeps its state."""
