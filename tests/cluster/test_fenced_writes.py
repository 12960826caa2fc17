"""A node stepping down acknowledges nothing alone (issue 13, points 2 and 3): once its mount is
fenced, a write waiting on a silent peer fails with EIO instead of succeeding when the peer
timeout lets it go on alone, and so does every write after; writes the peer acknowledges still
complete (a swap drains normally)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

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
from tests.helpers.pair import Pair

TIMEOUT = 3.0
WRITE = (
    "import os, sys\n"
    "try:\n"
    "    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)\n"
    "    os.write(fd, b'x' * 4096); os.fsync(fd); print('acknowledged')\n"
    "except OSError as exc:\n"
    "    print(exc.strerror)\n"
)


@pytest.fixture
def pair(workspace: Path) -> Iterator[Pair]:
    cluster = Pair(workspace, extra=["--timeout", str(TIMEOUT), "--module", "demo/0"])
    try:
        yield cluster
    finally:
        cluster.stop()


def _write(path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITE, str(path)], stdout=subprocess.PIPE, text=True
    )


@pytest.mark.root
def test_a_fenced_mount_fails_the_writes_it_cannot_have_acknowledged(pair: Pair) -> None:
    control = str(pair.base / "a.sock")
    secondary = pair.start_secondary()
    pair.start_primary("--control", control)
    first = _write(pair.a / "before")
    assert first.communicate(timeout=30)[0].strip() == "acknowledged"
    secondary.signal(signal.SIGSTOP)  # silent: acknowledges nothing more
    try:
        pending = _write(pair.a / "pending")
        wait_for(lambda: (pair.a / "pending").exists(), 10, "the write to start")
        assert "fenced" in ask(control, "fence")["message"]
        out, _ = pending.communicate(timeout=TIMEOUT * 3)
        assert out.strip() == "Input/output error"  # not acknowledged alone after the timeout
        later = _write(pair.a / "later")
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
