from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.lab import LabCluster


@pytest.fixture
def lab(workspace: Path) -> Iterator[LabCluster]:
    cluster = LabCluster(workspace / "lab")
    try:
        yield cluster.up()
        for node in ("a", "b"):
            assert "Traceback" not in cluster.log(node), cluster.log(node)
    finally:
        cluster.down()
