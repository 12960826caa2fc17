"""What a copy holds, told to the peer and to the operator: how many files and bytes, and its
newest change. Enough to tell an empty copy from one with data when neither has a history (the
first start), and for the operator to choose between two that both have data."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

MAX_WALKED = 200_000  # entries looked at; beyond, the figures are lower bounds
IGNORED = frozenset({"lost+found"})  # what mkfs puts in an empty filesystem


@dataclass(frozen=True)
class Holdings:
    files: int = 0
    bytes: int = 0
    newest: float = 0.0  # the newest modification time seen (seconds since the epoch)
    complete: bool = True  # False: the walk stopped at MAX_WALKED

    @property
    def holds(self) -> bool:
        return self.files > 0

    def as_dict(self) -> dict[str, object]:
        return {
            "files": self.files,
            "bytes": self.bytes,
            "newest": self.newest or None,
            "complete": self.complete,
        }

    def describe(self) -> str:
        if not self.holds:
            return "empty"
        more = "" if self.complete else "at least "
        return f"{more}{self.files} entries, {self.bytes} bytes"


def survey_copy(directories: Sequence[str]) -> Holdings:
    """Walk the copy's directories (not following symlinks)."""
    files = size = 0
    newest = 0.0
    for top in directories:
        stack = [top]
        while stack:
            try:
                entries = list(os.scandir(stack.pop()))
            except OSError:
                continue
            for entry in entries:
                if entry.name in IGNORED and os.path.dirname(entry.path) == top:
                    continue
                files += 1
                if files > MAX_WALKED:
                    return Holdings(files - 1, size, newest, complete=False)
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                newest = max(newest, st.st_mtime)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    size += st.st_size
    return Holdings(files, size, newest)
