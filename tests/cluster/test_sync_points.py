"""The two sync points (issue 15, point 3; D33), on a real mount and receiver with the peer frozen
(SIGSTOP: no end of stream, no acknowledgement). At ``write`` (the default) a write(2) returns only
once the peer acknowledged it. At ``fsync`` a write returns once sent, and fsync, fdatasync and
writes to files opened O_DSYNC return only once the peer acknowledged everything before them;
a peer that stays silent is still noticed, and a fenced node still acknowledges nothing alone.
The crash points of both are in test_crash_points.py."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tandem.engine.control.channel import ask
from tests.helpers.mountproc import wait_for
from tests.helpers.pair import Pair

pytestmark = [pytest.mark.root, pytest.mark.both_drivers]

# Opens FILE (O_DSYNC with "dsync"), writes 4 KiB, says "written", then (unless "dsync") fsyncs
# and says "synced"; an error is printed as its text.
STEPS = r"""
import os, sys
path, how = sys.argv[1], sys.argv[2]
try:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_DSYNC if how == "dsync" else 0), 0o644)
    os.pwrite(fd, b"%-4095s\n" % how.encode(), 0)
    print("written", flush=True)
    if how != "dsync":
        (os.fdatasync if how == "fdatasync" else os.fsync)(fd)
        print("synced", flush=True)
except OSError as exc:
    print(exc.strerror, flush=True)
"""


class Steps:
    """A writer in a process of its own whose progress the test reads line by line."""

    def __init__(self, path: Path, how: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", STEPS, str(path), how], stdout=subprocess.PIPE, text=True
        )

    def next_line(self, within: float) -> str | None:
        """The writer's next line, or None if it says nothing within ``within`` seconds."""
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], within)
        return self.process.stdout.readline().strip() if ready else None

    def end(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def writers() -> Iterator[list[Steps]]:
    started: list[Steps] = []
    try:
        yield started
    finally:
        for writer in started:
            writer.end()


def _mirrored(pair: Pair, name: str, how: str) -> bool:
    copy = pair.b / name
    return copy.exists() and copy.read_bytes()[: len(how)] == how.encode()


@contextmanager
def _peer_frozen(pair: Pair) -> Iterator[None]:
    """The secondary stopped (no end of stream, no acknowledgement), resumed afterwards."""
    assert pair.secondary is not None
    pair.secondary.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        pair.secondary.signal(signal.SIGCONT)


def _start(pair: Pair, sync: str) -> str:
    control = str(pair.base / "a.sock")
    pair.start_secondary()
    pair.start_primary("--sync", sync, "--control", control)
    for name in ("f", "g"):  # created while the peer answers: only the writes wait below
        (pair.a / name).write_bytes(b"")
    return control


@pytest.mark.parametrize("how", ["fsync", "fdatasync"])
def test_at_the_fsync_point_writes_return_once_sent_and_fsync_waits_for_the_peer(
    make_pair: Callable[[float], Pair], writers: list[Steps], how: str
) -> None:
    pair = make_pair(60)
    control = _start(pair, "fsync")
    assert ask(control, "status")["sync"] == "fsync"
    with _peer_frozen(pair):
        writer = Steps(pair.a / "f", how)
        writers.append(writer)
        assert writer.next_line(20) == "written"  # the peer has not acknowledged it
        dsync = Steps(pair.a / "g", "dsync")
        writers.append(dsync)
        wait_for(lambda: ask(control, "status")["writes_waiting"] >= 2, 20, "both to wait")
        assert writer.next_line(1) is None, "fsync returned before the peer held the write"
        assert dsync.next_line(0) is None, "an O_DSYNC write returned before the peer held it"
    assert writer.next_line(20) == "synced"
    assert dsync.next_line(20) == "written"
    # what fsync and the O_DSYNC write returned for is on the peer's copy already
    assert _mirrored(pair, "f", how) and _mirrored(pair, "g", "dsync")


def test_at_the_write_point_each_write_waits_for_the_peer(
    make_pair: Callable[[float], Pair], writers: list[Steps]
) -> None:
    pair = make_pair(60)
    control = _start(pair, "write")
    assert ask(control, "status")["sync"] == "write"
    with _peer_frozen(pair):
        writer = Steps(pair.a / "f", "fsync")
        writers.append(writer)
        wait_for(lambda: ask(control, "status")["writes_waiting"] >= 1, 20, "the write to wait")
        assert writer.next_line(1) is None, "a write returned before the peer acknowledged it"
    assert writer.next_line(20) == "written"
    assert _mirrored(pair, "f", "fsync")
    assert writer.next_line(20) == "synced"


def test_at_the_fsync_point_a_silent_peer_is_noticed_with_no_writer_waiting(
    make_pair: Callable[[float], Pair], writers: list[Steps]
) -> None:
    pair = make_pair(2)
    control = _start(pair, "fsync")
    assert pair.primary is not None
    with _peer_frozen(pair):
        fd = os.open(pair.a / "f", os.O_WRONLY)
        try:
            os.pwrite(fd, b"sent, never acknowledged", 0)  # returns: nobody waits on the peer
        finally:
            os.close(fd)
        assert ask(control, "status")["writes_waiting"] == 0
        pair.primary.wait_log("did not acknowledge within 2 s", timeout=15)
        assert ask(control, "status")["replication"] != "in sync"
        # alone (this mount may go on alone by itself): fsync no longer waits for the peer
        writer = Steps(pair.a / "g", "fsync")
        writers.append(writer)
        assert writer.next_line(20) == "written"
        assert writer.next_line(20) == "synced"


def test_at_the_fsync_point_a_fenced_node_fails_the_fsync_it_cannot_promise(
    make_pair: Callable[[float], Pair], writers: list[Steps]
) -> None:
    pair = make_pair(3)
    control = _start(pair, "fsync")
    with _peer_frozen(pair):
        writer = Steps(pair.a / "f", "fsync")
        writers.append(writer)
        assert writer.next_line(20) == "written"
        wait_for(lambda: ask(control, "status")["writes_waiting"] > 0, 20, "the fsync to wait")
        assert "fenced" in ask(control, "fence")["message"]
        assert writer.next_line(15) == "Input/output error"  # never promised alone
        later = Steps(pair.a / "g", "fsync")
        writers.append(later)
        assert later.next_line(20) == "Input/output error"  # alone and fenced: nothing returns
