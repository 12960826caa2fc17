"""How far a resync is: bytes settled of bytes planned, paths done of paths found, rate, ETA.

Measured against a walk of the plan's paths (names and sizes, in a thread): far cheaper than
the hashing it announces.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field

from tandem.engine.reintegration.plan import Need, Plan
from tandem.fsdriver.beneath import lstat_beneath, open_beneath


@dataclass
class Progress:
    started: float = field(default_factory=time.monotonic)
    paths_total: int = 0  # grows as directories are listed
    paths_done: int = 0
    bytes_compared: int = 0  # local bytes hashed
    bytes_sent: int = 0  # file data sent by the resync
    bytes_done: int = 0  # of the plan's bytes (compared, or sent without comparing)
    bytes_total: int | None = None  # the plan's bytes, once estimated (a walk of its paths)
    files_total: int | None = None  # objects under the plan's paths, once estimated
    unsettled: int = 0  # paths the peer asked to have compared again

    def as_dict(self) -> dict[str, float | int | None]:
        elapsed = time.monotonic() - self.started
        rate = self.bytes_done / elapsed if elapsed > 0 else 0.0
        remaining = None
        if self.bytes_total is not None and rate > 0:
            remaining = round(max(0, self.bytes_total - self.bytes_done) / rate, 1)
        return {
            "paths_total": max(self.paths_total, self.files_total or 0),
            "paths_done": self.paths_done,
            "bytes_total": self.bytes_total,
            "bytes_done": min(self.bytes_done, self.bytes_total or self.bytes_done),
            "bytes_compared": self.bytes_compared,
            "bytes_sent": self.bytes_sent,
            "unsettled": self.unsettled,
            "elapsed_s": round(elapsed, 3),
            "rate_bytes_s": round(rate),
            "eta_s": remaining,
        }


def estimate(root_fd: int, plan: Plan) -> tuple[int, int]:
    """(objects, bytes) a plan covers, as the tree is now: what progress is measured against.
    A walk of names and sizes, far cheaper than the hashing it announces."""
    objects = size = 0
    for path, work in plan.work.items():
        try:
            st = lstat_beneath(root_fd, path)
        except OSError:
            continue
        objects += 1
        if stat.S_ISREG(st.st_mode):
            if work.need & (Need.TREE | Need.ENTRY):
                size += st.st_size
            else:
                size += sum(max(0, min(end, st.st_size) - start) for start, end in work.ranges)
        elif stat.S_ISDIR(st.st_mode) and work.need & Need.TREE:
            found, found_size = _walk_sizes(root_fd, path)
            objects += found
            size += found_size
    return objects, size


def _walk_sizes(root_fd: int, top: bytes) -> tuple[int, int]:
    try:
        top_fd = open_beneath(root_fd, top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return 0, 0
    stack = [b"/proc/self/fd/%d" % top_fd]  # scandir below never follows a symlink
    try:
        return _walk_stack(stack)
    finally:
        os.close(top_fd)


def _walk_stack(stack: list[bytes]) -> tuple[int, int]:
    objects = size = 0
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            objects += 1
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    size += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return objects, size
