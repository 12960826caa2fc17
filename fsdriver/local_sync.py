"""The backing copy's fsync, run where it costs least.

A trio thread round trip costs ≈ 150 µs on a small VM, more than a quick ``fdatasync`` of a
file with a few fresh blocks (≈ 100 µs): SQLite and PostgreSQL commit with exactly such syncs,
so running them in a thread made every commit slower. But a sync run inline stalls every other
request of the mount while it runs, and a file with megabytes unsynced, or a slow disk, can
take seconds. So: inline only when no other request is in progress, syncs have been quick and
the file has little unsynced data; in a thread otherwise (decision D22 in docs/architecture.md).
Measured on a tmpfs, unreplicated: write + fsync 540-650 -> 290-370 µs, SQLite 800-900 ->
1,260-1,370 tx/s; pgbench with 4 clients (other requests usually in progress) on the lab's disk
about the same with or without the "no other request" condition.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import trio

INLINE_TYPICAL_S = 0.002  # recent syncs took less than this on average (a stall others bear)
INLINE_MAX_UNSYNCED = 256 << 10  # bytes written through the mount since the file's last sync
_WEIGHT = 0.2  # of the newest sync in the running average


class LocalSync:
    def __init__(self) -> None:
        self._typical = 0.0
        self._unsynced: dict[int, int] = {}
        self.inline = 0  # how many syncs ran inline (for tests)
        self.threaded = 0

    def wrote(self, ino: int, size: int) -> None:
        self._unsynced[ino] = self._unsynced.get(ino, 0) + size

    def forget(self, ino: int) -> None:
        self._unsynced.pop(ino, None)

    async def sync(self, fd: int, ino: int, data_only: bool, nothing_else_waits: bool) -> None:
        call = os.fdatasync if data_only else os.fsync
        quick = (
            nothing_else_waits
            and self._typical < INLINE_TYPICAL_S
            and self._unsynced.get(ino, 0) <= INLINE_MAX_UNSYNCED
        )
        # counted as synced before the call: a write racing with a threaded sync stays counted
        self._unsynced.pop(ino, None)
        if quick:
            self.inline += 1
            self._timed(call, fd)
        else:
            self.threaded += 1
            await trio.to_thread.run_sync(self._timed, call, fd)

    def _timed(self, call: Callable[[int], None], fd: int) -> None:
        started = time.perf_counter()
        try:
            call(fd)
        finally:
            took = time.perf_counter() - started
            self._typical += _WEIGHT * (took - self._typical)
