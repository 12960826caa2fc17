"""What the filesystem announces *before* it changes the backing tree: one `Change` per
operation, handed to a `ChangeRecorder` (the reintegration journal).

Why before: the journal must name everything this copy may hold that the peer may not. A change
made first and recorded second leaves a window where a crash hides it; recorded first, the worst
a crash does is name a change that never happened, which costs a comparison, never a divergence.
A `Change` is deliberately coarse (no data, no stamps): it says *where* the copies may differ.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

UNBOUNDED = (1 << 63) - 1  # "to the end of the file, whatever its size then"


class ChangeKind(enum.IntEnum):
    WRITE = 1  # bytes [offset, offset + length) of path
    RESIZE = 2  # path truncated or extended to `offset`: everything from there may differ
    METADATA = 3  # mode, owner, times or xattrs of path
    CREATE = 4  # a new object at path (file, directory, node, symlink)
    REMOVE = 5  # path unlinked or removed
    RENAME = 6  # path moved to other (replacing what was there)
    EXCHANGE = 7  # path and other swapped
    LINK = 8  # other became a new name of path
    SHARED = 9  # path has other names: what changes through it also changes them, unnamed
    SCATTERED = 10  # path's content changed in too many places to list: compare it by hashes


# kinds whose effect depends on objects' identities: the journal also records that they happened
NAMESPACE_MOVES = frozenset({ChangeKind.RENAME, ChangeKind.EXCHANGE, ChangeKind.LINK})


@dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    path: bytes
    other: bytes = b""
    offset: int = 0
    length: int = 0


class ChangeRecorder(Protocol):
    def intend(self, change: Change) -> None:
        """Called before the backing tree changes; raising aborts the operation (EIO)."""

    def done(self, change: Change) -> None:
        """Called after a `NAMESPACE_MOVES` change succeeded."""


class NoRecorder:
    def intend(self, change: Change) -> None:
        return None

    def done(self, change: Change) -> None:
        return None


NO_RECORDER: ChangeRecorder = NoRecorder()
