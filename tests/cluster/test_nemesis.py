"""The nemesis in the suite (issue 13, point 9): a fixed seed whose schedule holds every kind of
fault — TCP resets, SIGSTOP of the mount, kill -9 of the mount process alone, a heartbeat flood,
kill -9 of a node, a partition, delay, packet loss, a full disk, a cable cut — under a client
writing at the VIP. Long schedules: `tandem lab nemesis --seed N --faults K`
(docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tandem.engine.lab.nemesis import KINDS, schedule
from tests.helpers.lab import CLI, LabCluster

pytestmark = pytest.mark.root

SEED, FAULTS = 898, 11


@pytest.fixture
def lab(workspace: Path) -> Iterator[LabCluster]:
    cluster = LabCluster(workspace / "lab", static=False, disk_mib=256)
    try:
        yield cluster.up()
    finally:
        cluster.down()


def test_the_schedule_is_the_seed_s_and_holds_every_kind() -> None:
    assert schedule(SEED, FAULTS) == schedule(SEED, FAULTS)
    assert {fault.kind for fault in schedule(SEED, FAULTS)} == set(KINDS)
    assert schedule(SEED, FAULTS) != schedule(SEED + 1, FAULTS)


def test_random_faults_lose_no_acknowledged_write_and_never_two_serve(
    lab: LabCluster, workspace: Path
) -> None:
    out = workspace / "nemesis.json"
    chosen = ["--seed", str(SEED), "--faults", str(FAULTS), "--out", str(out)]
    done = subprocess.run(
        [*CLI, "lab", "--dir", str(lab.directory), "nemesis", *chosen],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.exists(), done.stderr
    report = json.loads(out.read_text())
    assert report["violations"] == [], report
    assert report["acknowledged_writes_lost"] == 0, report
    assert report["writes_acknowledged"] > 100, report
    assert report["verify"] in ("identical", "kept aside"), report
    assert report["failovers"] >= 3, report
    assert report["samples"] > 100, report
    assert done.returncode == 0 and report["ok"], done.stderr
