"""`python -m tandem.engine.cli`: how the node starts its own children (no PATH needed)."""

import sys

from tandem.engine.cli.main import main

sys.exit(main())
