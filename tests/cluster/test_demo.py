"""The README's main job (`tandem demo`) passes, and it cleans up after itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root


def test_the_demo_crashes_the_primary_and_finds_every_commit_on_the_secondary(
    workspace: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tandem.engine.cli", "demo", "--workdir", str(workspace)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"committed_transactions_lost": 0' in done.stdout
    assert "PASS" in done.stdout
    assert not (workspace / "lab").exists()  # the lab is down again
