"""A node stepping down acknowledges nothing alone (issue 13, points 2 and 3): once its mount is
fenced, a write waiting on a silent peer fails with EIO instead of succeeding when the peer
timeout lets it go on alone, and so does every write after; writes the peer acknowledges still
complete (a swap drains normally)."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from tandem.engine.control.channel import ask
from tandem.engine.failover.module_state import (
    KeepAside,
    Module,
    ReceiveCopy,
    ReleaseVip,
    State,
)
from tandem.engine.failover.runner import peer_may_serve_without_us
from tests.helpers.mountproc import wait_for
from tests.helpers.pair import Pair, write_and_sync

pytestmark = pytest.mark.both_drivers

TIMEOUT = 3.0


@pytest.fixture
def pair(make_pair: Callable[[float], Pair]) -> Pair:
    return make_pair(TIMEOUT)


@pytest.mark.root
def test_a_fenced_mount_fails_the_writes_it_cannot_have_acknowledged(pair: Pair) -> None:
    control = str(pair.base / "a.sock")
    secondary = pair.start_secondary()
    pair.start_primary("--control", control)
    first = write_and_sync(pair.a / "before")
    assert first.communicate(timeout=30)[0].strip() == "acknowledged"
    secondary.signal(signal.SIGSTOP)  # silent: acknowledges nothing more
    try:
        pending = write_and_sync(pair.a / "pending")
        # asked of the mount, not of the tree: a lookup in the directory would wait behind the
        # create itself (the kernel holds the directory while the create waits for the peer)
        wait_for(lambda: ask(control, "status")["writes_waiting"] > 0, 10, "the write to wait")
        assert "fenced" in ask(control, "fence")["message"]
        out, _ = pending.communicate(timeout=TIMEOUT * 3)
        assert out.strip() == "Input/output error"  # not acknowledged alone after the timeout
        later = write_and_sync(pair.a / "later")
        assert later.communicate(timeout=30)[0].strip() == "Input/output error"
        assert ask(control, "status")["fenced"] is True
    finally:
        secondary.signal(signal.SIGCONT)


def test_only_a_step_down_that_lets_the_peer_serve_fences() -> None:
    prim, alone = Module(State.PRIM), Module(State.ALONE)
    assert peer_may_serve_without_us(prim, Module(State.WAIT), [ReleaseVip()])  # isolated
    assert peer_may_serve_without_us(prim, Module(State.SECOND), [KeepAside("x")])
    assert not peer_may_serve_without_us(prim, Module(State.SECOND), [ReceiveCopy()])  # swap
    assert not peer_may_serve_without_us(alone, Module(State.STOP), [])  # its own stop
    assert not peer_may_serve_without_us(Module(State.SECOND), Module(State.WAIT), [])
