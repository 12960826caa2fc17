"""Going on alone is a decision, not a timeout (issue 13, point 3): a mount run with
`--alone-when-permitted` (as the node runs its mounts) never acknowledges a write its peer does
not have until `permit` arrives for the current time out of sync; without one, the write fails
with EIO after the timeout. Before this, a primary whose stream broke acknowledged at once — the
nemesis lost 9,423 acknowledged writes when a reset left the secondary's end half-open (it never
learnt it was behind) and the primary's mount then died."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from tandem.engine.control.channel import ask
from tests.helpers.mountproc import wait_for
from tests.helpers.pair import Pair, write_and_sync

TIMEOUT = 3.0


@pytest.fixture
def pair(make_pair: Callable[[float], Pair]) -> Pair:
    return make_pair(TIMEOUT)


def _start(pair: Pair) -> str:
    control = str(pair.base / "a.sock")
    pair.start_secondary()
    pair.start_primary("--control", control, "--alone-when-permitted")
    first = write_and_sync(pair.a / "before")
    assert first.communicate(timeout=30)[0].strip() == "acknowledged"
    return control


def _asking(control: str) -> dict[str, object]:
    return ask(control, "asking")


def _out_of_sync(control: str) -> None:
    wait_for(lambda: ask(control, "status")["replication"] != "in sync", 10, "the stream's end")


@pytest.mark.root
def test_a_write_the_peer_lacks_waits_for_the_permit(pair: Pair) -> None:
    control = _start(pair)
    assert _asking(control)["asking"] is False  # in sync: acknowledgements come from the peer
    assert pair.secondary is not None
    pair.secondary.signal(signal.SIGKILL)  # the stream ends; nobody says the peer is behind
    _out_of_sync(control)
    time.sleep(0.3)
    assert _asking(control)["asking"] is False  # nothing waits: the peer is not asked yet
    pending = write_and_sync(pair.a / "pending")
    wait_for(lambda: _asking(control)["asking"] is True, 10, "the mount to ask")
    asked = _asking(control)
    time.sleep(1.0)
    assert pending.poll() is None, "acknowledged alone without a decision"
    stale = ask(control, "permit", episode=int(str(asked["episode"])) - 1, why="an old answer")
    assert "is over" in stale["message"]
    time.sleep(0.3)
    assert pending.poll() is None, "a permit for an earlier episode was taken"
    ask(control, "permit", episode=asked["episode"], why="the test says the peer is behind")
    assert pending.communicate(timeout=10)[0].strip() == "acknowledged"
    later = write_and_sync(pair.a / "later")  # permitted until the copies are in sync again
    assert later.communicate(timeout=10)[0].strip() == "acknowledged"
    assert _asking(control)["asking"] is False


@pytest.mark.root
def test_without_a_decision_the_write_fails_after_the_timeout(pair: Pair) -> None:
    control = _start(pair)
    assert pair.secondary is not None
    pair.secondary.signal(signal.SIGKILL)
    _out_of_sync(control)
    started = time.monotonic()
    pending = write_and_sync(pair.a / "undecided")
    assert pending.communicate(timeout=TIMEOUT * 4)[0].strip() == "Input/output error"
    assert time.monotonic() - started >= TIMEOUT * 0.9
    assert pair.primary is not None and pair.primary.alive()  # the mount lives on


@pytest.mark.root
def test_a_silent_peer_leaves_the_write_undecided_after_the_ack_timeout(pair: Pair) -> None:
    control = _start(pair)
    assert pair.secondary is not None
    pair.secondary.signal(signal.SIGSTOP)  # half-open: no end of stream, no acknowledgement
    try:
        pending = write_and_sync(pair.a / "unacknowledged")
        wait_for(lambda: _asking(control)["asking"] is True, TIMEOUT * 3, "the mount to ask")
        assert pending.poll() is None, "acknowledged alone after the ack timeout"
        ask(control, "permit", episode=_asking(control)["episode"], why="the test decides")
        assert pending.communicate(timeout=10)[0].strip() == "acknowledged"
    finally:
        pair.secondary.signal(signal.SIGCONT)


@pytest.mark.root
def test_a_permit_lasts_until_the_copies_are_in_sync_again(pair: Pair) -> None:
    control = _start(pair)
    assert pair.secondary is not None
    pair.secondary.signal(signal.SIGKILL)
    alone = write_and_sync(pair.a / "alone")
    wait_for(lambda: _asking(control)["asking"] is True, 10, "the mount to ask")
    first = _asking(control)
    ask(control, "permit", episode=first["episode"], why="the test says the peer is behind")
    assert alone.communicate(timeout=10)[0].strip() == "acknowledged"
    pair.secondary.stop()  # clears what the killed one left (its read-only bind)
    pair.start_secondary()  # back: the resync brings it up to date
    wait_for(lambda: ask(control, "status")["replication"] == "in sync", 30, "in sync")
    assert (pair.b / "alone").exists()
    pair.secondary.signal(signal.SIGKILL)
    pending = write_and_sync(pair.a / "next")
    wait_for(lambda: _asking(control)["asking"] is True, 10, "the mount to ask again")
    second = _asking(control)
    assert int(str(second["episode"])) > int(str(first["episode"]))
    time.sleep(1.0)
    assert pending.poll() is None, "the old permit outlived the resync"
    ask(control, "permit", episode=second["episode"], why="decided again")
    assert pending.communicate(timeout=10)[0].strip() == "acknowledged"
