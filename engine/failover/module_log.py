"""The module log: every state change and why, one line each, for the operator (`tandem
logs`). Writing it never stops the module: a full disk is said once in the node's log.

Each line starts with the local time and its offset from UTC (two nodes in two zones, or a
summer-time change, must still read in order). The file is rotated by size: a module that
flaps for months cannot fill the disk with its log.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)

ROTATE_AT = 8 << 20  # bytes
KEPT = 3  # module.log.1 … module.log.3


def stamp(now: float | None = None) -> str:
    """``2026-12-03T09:01:13.423+0100``: local time with its offset, to the millisecond."""
    now = time.time() if now is None else now
    local = time.localtime(now)
    millis = int(now * 1000) % 1000
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', local)}.{millis:03d}{time.strftime('%z', local)}"


class ModuleLog:
    def __init__(self, path: str, rotate_at: int = ROTATE_AT) -> None:
        self.path = path
        self._rotate_at = rotate_at
        self._failed = False

    def note(self, text: str) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(f"{stamp()} {text}\n")
                full = out.tell() >= self._rotate_at
            if full:
                self._rotate()
            self._failed = False
        except OSError as exc:
            if not self._failed:
                log.error("cannot write the module log: %s", exc.strerror)
            self._failed = True

    def _rotate(self) -> None:
        for index in range(KEPT - 1, 0, -1):
            older = f"{self.path}.{index}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{index + 1}")
        os.replace(self.path, f"{self.path}.1")
