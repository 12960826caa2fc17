"""Reintegration with real processes and real FUSE: a secondary that was away comes back and
gets exactly what changed (the journal), even while the application keeps writing to the very
blocks being resynced, and even when a node is killed in the middle of the resync."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tandem.fsdriver.mount import is_tandem_mount
from tests.helpers.mountproc import wait_for
from tests.helpers.pair import Node, Pair
from tests.helpers.treediff import diff, snapshot

pytestmark = pytest.mark.root

MIB = 1 << 20


@pytest.fixture
def pair(workspace: Path) -> Iterator[Pair]:
    cluster = Pair(workspace)
    cluster.extra = ["--journal"]  # completed per side below
    try:
        yield cluster
    finally:
        cluster.stop()


def start(pair: Pair, *, secondary: bool = True, primary: bool = True, **kw: str) -> None:
    base = pair.base
    pair.extra = []
    if secondary:
        pair.start_secondary("--journal", str(base / "journal-b"))
    if primary:
        pair.start_primary("--journal", str(base / "journal-a"), "--retry", "0.2", *kw.values())


def in_sync_count(pair: Pair) -> int:
    assert pair.primary is not None
    return pair.primary.log().count("(in sync)")


def wait_in_sync(pair: Pair, count: int, timeout: float = 60) -> None:
    wait_for(lambda: in_sync_count(pair) >= count, timeout, f"resync #{count}")


def assert_same(pair: Pair) -> None:
    differences = diff(snapshot(str(pair.a), times=True), snapshot(str(pair.b), times=True))
    logs = "".join(n.log() for n in (pair.primary, pair.secondary) if n is not None)
    assert differences == [], f"{differences}\n{logs}"


def last_resync(pair: Pair) -> tuple[str, int]:
    assert pair.primary is not None
    log = pair.primary.log()
    how = re.findall(r"resync with \S+ started: (.*)", log)[-1]
    sent = int(re.findall(r"(\d+) bytes sent", log)[-1])
    return how, sent


def test_a_returning_secondary_gets_only_what_changed(pair: Pair) -> None:
    start(pair)
    wait_in_sync(pair, 1)
    rng = random.Random(5)
    (pair.a / "big").write_bytes(rng.randbytes(32 * MIB))
    (pair.a / "old").write_text("renamed while away, not sent again")
    (pair.a / "gone").write_text("deleted while away")
    assert pair.secondary is not None
    pair.secondary.stop()
    changed = 0
    with open(pair.a / "big", "r+b") as big:
        for block in rng.sample(range(32 * MIB // 4096), 80):  # 1% of the blocks
            big.seek(block * 4096)
            big.write(rng.randbytes(4096))
            changed += 4096
    os.rename(pair.a / "old", pair.a / "new")
    os.unlink(pair.a / "gone")
    (pair.a / "created").write_bytes(b"x" * 1000)
    changed += 1000
    start(pair, primary=False)
    wait_in_sync(pair, 2)
    how, sent = last_resync(pair)
    assert how.startswith("tracked"), how
    assert sent <= changed * 1.2, (sent, changed)
    assert_same(pair)


WRITER = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
deadline = time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < deadline:
    for block in range(0, 16 * 1024 * 1024, 1024 * 1024):  # the blocks being resynced
        os.pwrite(fd, b"%08d" % n * 512, block)
        n += 1
os.close(fd)
"""


def test_writes_during_the_resync_are_never_overwritten_by_older_resync_data(pair: Pair) -> None:
    start(pair)
    wait_in_sync(pair, 1)
    (pair.a / "hot").write_bytes(os.urandom(16 * MIB))
    assert pair.secondary is not None
    pair.secondary.stop()
    (pair.a / "hot").write_bytes(os.urandom(16 * MIB))  # all of it changes while away
    assert pair.primary is not None
    pair.primary.stop()
    # slow the resync down (4 MiB/s: about 4 s) so the writer overlaps it for sure
    pair.start_primary(
        "--journal",
        str(pair.base / "journal-a"),
        "--retry",
        "0.2",
        "--resync-bandwidth",
        "4",
        expect_peer=False,
    )
    start(pair, primary=False)
    wait_for(lambda: "resync with" in pair.primary.log(), 20, "the resync")  # type: ignore[union-attr]
    writer = subprocess.run([sys.executable, "-c", WRITER, str(pair.a / "hot"), "3"], check=True)
    assert writer.returncode == 0
    assert in_sync_count(pair) == 1, "the resync ended before the writer: nothing was proven"
    wait_in_sync(pair, 2)  # the log goes on from the first run
    assert_same(pair)


@pytest.mark.parametrize("victim", ["secondary", "primary"])
def test_a_node_killed_during_the_resync_resyncs_correctly_next_time(
    pair: Pair, victim: str
) -> None:
    start(pair)
    wait_in_sync(pair, 1)
    rng = random.Random(7)
    for n in range(8):
        (pair.a / f"f{n}").write_bytes(rng.randbytes(2 * MIB))
    assert pair.secondary is not None and pair.primary is not None
    pair.secondary.stop()
    for n in range(8):
        with open(pair.a / f"f{n}", "r+b") as f:
            f.write(rng.randbytes(MIB))
    os.mkdir(pair.a / "new-dir")
    (pair.a / "new-dir" / "x").write_text("x")
    pair.primary.stop()
    for attempt in range(3):
        pair.start_primary(
            "--journal",
            str(pair.base / "journal-a"),
            "--retry",
            "0.2",
            "--resync-bandwidth",
            "2",
            expect_peer=False,
        )
        start(pair, primary=False)
        wait_for(lambda: "resync with" in pair.primary.log(), 20, "the resync")  # type: ignore[union-attr]
        (pair.a / f"during-{attempt}").write_text("written during an interrupted resync")
        time.sleep(rng.uniform(0.2, 1.5))
        killed = pair.secondary if victim == "secondary" else pair.primary
        assert killed is not None and killed.process is not None
        killed.process.send_signal(signal.SIGKILL)
        killed.process.wait()
        pair.stop()
    before = in_sync_count(pair)
    pair.start_primary(
        "--journal", str(pair.base / "journal-a"), "--retry", "0.2", expect_peer=False
    )
    start(pair, primary=False)
    wait_in_sync(pair, before + 1, timeout=90)
    assert_same(pair)


def test_a_secondary_keeps_its_own_changes_aside_before_the_primary_replaces_them(
    pair: Pair,
) -> None:
    """b served alone (a was down) and wrote; a comes back as the primary: b's own changes,
    and only those paths, are kept aside with a report before a's versions replace them."""
    start(pair)
    wait_in_sync(pair, 1)
    (pair.a / "shared").write_text("both copies agree\n")
    (pair.a / "untouched").write_text("never changed on b\n")
    wait_for(lambda: (pair.b / "untouched").exists(), 10, "mirrored")
    pair.stop()
    # b serves alone: the same directories, the roles the other way round (a away)
    alone = Node(
        pair.b,
        [
            *["mount", str(pair.b), "--replicate-to", f"127.0.0.1:{pair.port}", "--node", "b"],
            *["--secret-file", str(pair.secret), "--journal", str(pair.base / "journal-b")],
            *["--timeout", "1"],
        ],
        pair.base / "b-alone.log",
    ).start()
    try:
        wait_for(lambda: is_tandem_mount(str(pair.b)), 20, "b's mount")
        (pair.b / "shared").write_text("written by b alone: a lacks it\n")
        (pair.b / "new-on-b").write_text("created by b alone\n")
        os.unlink(pair.b / "untouched")  # gone on b: the report says so
    finally:
        alone.stop()
    start(pair)  # a primary again, b its secondary
    wait_in_sync(pair, 2)
    assert pair.secondary is not None
    assert "own changes kept aside in" in pair.secondary.log()
    kept = [path for path in (pair.base / "aside").iterdir() if path.is_dir()]
    assert len(kept) == 1, kept
    assert (kept[0] / "shared").read_text() == "written by b alone: a lacks it\n"
    assert (kept[0] / "new-on-b").read_text() == "created by b alone\n"
    names = sorted(p.name for p in kept[0].iterdir())
    assert names == ["REPORT.txt", "new-on-b", "shared"], names  # only what b changed
    report = (kept[0] / "REPORT.txt").read_text()
    assert "untouched: not in this copy" in report and "changed 3 path(s)" in report
    assert (pair.b / "shared").read_text() == "both copies agree\n"  # a's version now
    assert_same(pair)
