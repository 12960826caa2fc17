from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.lab import LabCluster, checked_lab
from tests.helpers.pair import Pair


@pytest.fixture
def lab(workspace: Path) -> Iterator[LabCluster]:
    yield from checked_lab(LabCluster(workspace / "lab"))


@pytest.fixture
def failover_lab(workspace: Path) -> Iterator[LabCluster]:
    """A lab whose nodes fail over (`tandem node` with heartbeats), not fixed roles."""
    cluster = LabCluster(workspace / "lab", static=False)
    try:
        yield cluster.up()
    finally:
        cluster.down()


@pytest.fixture
def make_pair(workspace: Path) -> Iterator[Callable[[float], Pair]]:
    """A mount and a receiver on loopback with this peer timeout (stream "demo/0"), stopped
    after the test; their logs are printed (shown when it fails)."""
    made: list[Pair] = []

    def make(timeout: float) -> Pair:
        cluster = Pair(workspace, extra=["--timeout", str(timeout), "--module", "demo/0"])
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop()
            for node in (cluster.primary, cluster.secondary):
                if node is not None:
                    print(f"--- {node.log_path.name}\n{node.log()}")
