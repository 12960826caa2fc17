"""A plain copy of a replicated directory: applying changes to it, surveying and hashing it,
making it durable."""
