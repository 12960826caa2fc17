"""The tandem command, one file per command group."""
