"""Who serves a module: the pure state machine, its runner, scripts, checkers, remembered state."""
