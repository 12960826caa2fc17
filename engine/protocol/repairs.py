"""The resync's own items: what an object of the stale copy must *be*, whatever is there now.

An ordinary `Mutation` assumes both copies were equal before it; during a resync they are not,
so the primary says "this path is a file with this mode", "nothing is at this path". How a copy
carries them out is `tandem.engine.replica.repair`'s; their codes and layouts on the wire are
`tandem.engine.protocol.items`'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from tandem.fsdriver.mutation import Stamp

RENAME_EXCHANGE = 2  # `Move.flags`, as in renameat2


@dataclass(frozen=True, slots=True)
class Ensure:
    """``path`` must be an object of ``mode``'s type with that mode and owner; a different
    object there is replaced. ``fresh``: a new object even if one of the right type is there
    (the primary created this one: whatever the copy holds there is not it)."""

    path: bytes
    mode: int  # with the type bits
    uid: int
    gid: int
    rdev: int = 0
    target: bytes = b""  # a symlink's
    fresh: bool = False
    stamps: tuple[Stamp, ...] = ()


@dataclass(frozen=True, slots=True)
class RemoveTree:
    """Nothing may be at ``path`` (it is removed with everything under it)."""

    path: bytes
    stamps: tuple[Stamp, ...] = ()


@dataclass(frozen=True, slots=True)
class SetXattrs:
    """``path`` has exactly these extended attributes."""

    path: bytes
    xattrs: tuple[tuple[bytes, bytes], ...]
    stamps: tuple[Stamp, ...] = ()


@dataclass(frozen=True, slots=True)
class Move:
    """Replays a rename the copy may have missed, if what it moves is there (``flags`` as in
    renameat2). Moving the copy's own data costs nothing on the wire; the primary still compares
    what it moved."""

    old: bytes
    new: bytes
    flags: int = 0
    stamps: tuple[Stamp, ...] = ()


@dataclass(frozen=True, slots=True)
class LinkIfPresent:
    existing: bytes
    path: bytes
    stamps: tuple[Stamp, ...] = ()


Repair: TypeAlias = Ensure | RemoveTree | SetXattrs | Move | LinkIfPresent
REPAIR_TYPES = (Ensure, RemoveTree, SetXattrs, Move, LinkIfPresent)
