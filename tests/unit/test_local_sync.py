"""Where the backing copy's fsync runs: inline only when nothing else waits, syncs have been
quick and little is unsynced; in a thread otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from tandem.fsdriver import local_sync
from tandem.fsdriver.local_sync import INLINE_MAX_UNSYNCED, LocalSync


def test_inline_only_when_it_cannot_stall_anything(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    syncs = LocalSync()

    async def scenario() -> None:
        os.pwrite(fd, b"x" * 4096, 0)
        syncs.wrote(1, 4096)
        await syncs.sync(fd, 1, True, nothing_else_waits=True)
        assert (syncs.inline, syncs.threaded) == (1, 0)
        await syncs.sync(fd, 1, True, nothing_else_waits=False)  # others would wait
        assert (syncs.inline, syncs.threaded) == (1, 1)
        syncs.wrote(1, INLINE_MAX_UNSYNCED + 1)  # much to write back: may take long
        await syncs.sync(fd, 1, False, nothing_else_waits=True)
        assert (syncs.inline, syncs.threaded) == (1, 2)
        await syncs.sync(fd, 1, False, nothing_else_waits=True)  # counted as synced since
        assert (syncs.inline, syncs.threaded) == (2, 2)

    try:
        trio.run(scenario)
    finally:
        os.close(fd)


def test_slow_syncs_move_to_a_thread(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    syncs = LocalSync()
    local_sync_inline = local_sync.INLINE_TYPICAL_S

    async def scenario() -> None:
        syncs._typical = local_sync_inline * 10  # the disk has been slow lately
        await syncs.sync(fd, 1, True, nothing_else_waits=True)
        assert syncs.threaded == 1

    try:
        trio.run(scenario)
    finally:
        os.close(fd)
