"""At the fsync sync point file data travels UNHURRIED: the secondary folds its acknowledgement
into a later one (D33). What must still hold: nothing is applied late, an fsync or an O_SYNC
write's `settle` is acknowledged at once, and the owed acknowledgement is bounded. The real
replicator and receiver over loopback TCP, in one trio loop; the delay made long enough that a
test can tell "folded" from "sent"."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tandem.engine.config.stream import PeerAddress, StreamSettings
from tandem.engine.replication import receiver as receiver_module
from tandem.engine.replication.receiver import Receiver
from tandem.engine.replication.replicator import Replicator
from tandem.fsdriver.mutation import CreateFile, Sync, Write

SECRET = b"unhurried-secret-0123456789"


@asynccontextmanager
async def connected(
    a: Path, b: Path, sync: str, peer_timeout: float = 20
) -> AsyncIterator[Replicator]:
    a_fd = os.open(a, os.O_RDONLY | os.O_DIRECTORY)
    b_fd = os.open(b, os.O_RDONLY | os.O_DIRECTORY)
    try:
        receiver = Receiver(b_fd, StreamSettings("b", "m", str(b)), SECRET)
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(receiver.serve, "127.0.0.1", 0)
            port = listeners[0].socket.getsockname()[1]
            settings = StreamSettings(
                "a", "m", str(a), sync=sync, peer=PeerAddress("127.0.0.1", port),
                peer_timeout=peer_timeout, retry=0.05,
            )  # fmt: skip
            replicator = Replicator(settings, SECRET, root_fd=a_fd)
            nursery.start_soon(replicator.run)
            with trio.fail_after(20):
                while not replicator.in_sync:
                    await trio.sleep(0.01)
            yield replicator
            nursery.cancel_scope.cancel()
    finally:
        os.close(a_fd)
        os.close(b_fd)


async def _created(replicator: Replicator, name: bytes) -> int:
    await replicator.submit(CreateFile(name, 0o644, os.getuid(), os.getgid())).wait()
    return replicator.acknowledged


async def _acknowledged_within(replicator: Replicator, seq: int, seconds: float) -> bool:
    with trio.move_on_after(seconds):
        while replicator.acknowledged < seq:
            await trio.sleep(0.005)
        return True
    return False


def _write(replicator: Replicator, name: bytes, offset: int) -> int:
    replicator.submit(Write(name, offset, b"x" * 100))
    return replicator._next_seq - 1


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    return a, b


def test_unhurried_writes_are_applied_at_once_and_acknowledged_when_asked(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(receiver_module, "ACK_DELAY", 30.0)

    async def scenario() -> None:
        async with connected(*dirs, sync="fsync") as replicator:
            created = await _created(replicator, b"f")  # a name: acknowledged at once
            last = [_write(replicator, b"f", 100 * i) for i in range(10)][-1]
            assert created < last
            with trio.fail_after(10):  # applied though not acknowledged
                while (dirs[1] / "f").stat().st_size < 1000:
                    await trio.sleep(0.01)
            assert not await _acknowledged_within(replicator, last, 0.5), "folded, not sent"
            await replicator.settle().wait()  # an O_SYNC write: ACK_NOW
            assert replicator.acknowledged >= last

            last = _write(replicator, b"f", 5000)
            assert not await _acknowledged_within(replicator, last, 0.3)
            sync = replicator.submit(Sync(b"f", data_only=True))
            with trio.fail_after(5):
                await sync.wait()  # an fsync is never held back, and it covers what came before
            assert replicator.acknowledged > last

    trio.run(scenario)


def test_an_owed_acknowledgement_is_bounded_in_count_and_time(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(receiver_module, "ACK_DELAY", 30.0)
    monkeypatch.setattr(receiver_module, "OWED_ACK_ITEMS", 8)

    async def scenario() -> None:
        async with connected(*dirs, sync="fsync") as replicator:
            await _created(replicator, b"g")
            written = [_write(replicator, b"g", 100 * i) for i in range(8)]
            assert await _acknowledged_within(replicator, written[-1], 5), "8 owed: sent"
        monkeypatch.setattr(receiver_module, "ACK_DELAY", 0.005)
        async with connected(*dirs, sync="fsync") as replicator:
            await _created(replicator, b"h")
            last = _write(replicator, b"h", 0)
            assert await _acknowledged_within(replicator, last, 5), "sent after the delay"

    trio.run(scenario)


def test_at_the_write_sync_point_every_write_is_acknowledged_at_once(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(receiver_module, "ACK_DELAY", 30.0)

    async def scenario() -> None:
        async with connected(*dirs, sync="write") as replicator:
            await _created(replicator, b"w")
            with trio.fail_after(5):
                await replicator.submit(Write(b"w", 0, b"y" * 100)).wait()

    trio.run(scenario)


def test_a_peer_answering_a_slow_query_is_not_taken_for_silent(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fsync point's watchdog drops a peer that owes acknowledgements and says nothing; a
    peer busy answering a resync's query (a big directory listed, a big file hashed) says
    nothing either, and must not be dropped for it, or a resync of such a tree never ends."""
    (dirs[0] / "file").write_bytes(b"z" * 10_000)  # something for the resync to compare
    slow_answer = receiver_module.answer_query

    def answer_slowly(*args: object) -> bytes:
        time.sleep(1.5)  # longer than the peer timeout below
        return slow_answer(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(receiver_module, "answer_query", answer_slowly)

    async def scenario() -> None:
        async with connected(*dirs, sync="fsync", peer_timeout=0.6) as replicator:
            assert replicator.alone_reason is None

    trio.run(scenario)
    assert (dirs[1] / "file").read_bytes() == b"z" * 10_000
