"""The primary's mount never ends because of its peer (issue 13, first point): a secondary that
proves the secret and then breaks the stream — closes, resets, sends garbage, refuses with a
full disk, resets mid-stream — leaves the mount up and writing (alone, journalled), and it
reconnects and resyncs once a working secondary listens again. Each way, a few times."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from tandem.fsdriver.mount import is_tandem_mount
from tests.helpers.mountproc import wait_for
from tests.helpers.pair import Pair, fake_secondary

pytestmark = pytest.mark.root

TIMEOUT = 2.0
TRIES = 3
CLOSED_BY_THE_PRIMARY = ("listen-garbage", "listen-enospc")  # the fake waits for the close


@pytest.fixture
def pair(make_pair: Callable[[float], Pair]) -> Pair:
    return make_pair(TIMEOUT)


@pytest.mark.parametrize(
    "mode", ["listen-close", "listen-reset", "listen-garbage", "listen-enospc", "listen-ack-reset"]
)
def test_a_stream_broken_after_the_handshake_never_ends_the_mount(pair: Pair, mode: str) -> None:
    primary = pair.start_primary("--journal", str(pair.base / "journal"), expect_peer=False)
    for attempt in range(TRIES):
        seen = len(primary.log())
        fake = fake_secondary(pair, mode)
        try:
            assert fake.stdout is not None
            wait_for(lambda f=fake: "peer state sent" in (f.stdout.readline() or ""), 30, "a peer")
            # the application keeps writing through the break
            for index in range(20):
                (pair.a / f"{mode}-{attempt}-{index}").write_bytes(b"x" * 70_000)
            # the primary noticed: it went on alone, or it refused the peer right at the
            # handshake (what broke the stream came in the same read as PEER_STATE) and closed
            # the connection, which ends the fake
            wait_for(
                lambda s=seen, f=fake: (
                    "going on alone" in primary.log()[s:]
                    or (mode in CLOSED_BY_THE_PRIMARY and f.poll() is not None)
                ),
                30,
                "the primary's reaction",
            )
        finally:
            fake.kill()
            fake.communicate()
        assert primary.alive(), primary.log()
        assert is_tandem_mount(str(pair.a))
    # a working secondary: the primary reconnects by itself and brings it level
    pair.start_secondary()
    primary.wait_log("replicating demo/0", timeout=60)
    wait_for(lambda: (pair.b / f"{mode}-{TRIES - 1}-19").exists(), 30, "the resync")
    assert (pair.b / f"{mode}-0-0").read_bytes() == b"x" * 70_000
    assert "Traceback" not in primary.log(), primary.log()


def test_a_secondary_killed_and_started_again_applies_again(pair: Pair) -> None:
    """kill -9 of `tandem receive` leaves its read-only bind over the directory; the one started
    after it takes that away instead of opening its copy through it (it applied nothing then:
    "cannot apply mutation … EROFS", and never came in sync)."""
    secondary = pair.start_secondary()
    pair.start_primary("--control", str(pair.base / "a.sock"))
    (pair.a / "first").write_text("before the kill\n")
    wait_for(lambda: (pair.b / "first").exists(), 10, "mirrored")
    secondary.signal(signal.SIGKILL)
    assert secondary.process is not None
    secondary.process.wait(10)
    (pair.a / "while-away").write_text("written alone\n")
    pair.start_secondary()  # the killed one's read-only bind is still over b
    wait_for(lambda: (pair.b / "while-away").exists(), 30, "the resync after the restart")
    (pair.a / "after").write_text("mirrored again\n")
    wait_for(lambda: (pair.b / "after").exists(), 10, "mirrored after the restart")
    assert pair.secondary is not None and "EROFS" not in pair.secondary.log()
    assert "removed the read-only bind a failed run left" in pair.secondary.log()
