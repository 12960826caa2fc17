"""C accelerators (the per-block hash scanner) with pure-Python references of identical output.
Imports nothing else of Tandem."""
