"""What the application changed since a point of the stream: the clock a resync and a verify
read their answers against, so a comparison never trusts an answer it outran."""

from __future__ import annotations

from tandem.engine.protocol.repairs import RENAME_EXCHANGE
from tandem.fsdriver.change import UNBOUNDED
from tandem.fsdriver.mutation import (
    Allocate,
    MakeHardLink,
    Mutation,
    RemoveXattr,
    Rename,
    SetAttributes,
    SetXattr,
    Sync,
    Unlink,
    Write,
)
from tandem.fsdriver.syscall import FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE

MAX_REMEMBERED_CHANGES = 200_000


class ChangeClock:
    """What the application changed since a point of the stream (the resync's clock is the
    number of mutations it observed), so a comparison never trusts an answer it outran."""

    def __init__(self) -> None:
        self.clock = 0
        self._names: dict[bytes, int] = {}  # path -> last clock what it names changed
        self._meta: dict[bytes, int] = {}  # path -> last clock its attributes changed
        self._ranges: dict[bytes, list[tuple[int, int, int]]] = {}  # path -> (clock, start, end)
        self._data_clock = 0  # last data change anywhere (hard-linked files change unnamed)
        self._meta_clock = 0  # last attribute or link-count change anywhere (likewise)
        # last new name of an existing file: a file with one name now may have had two since
        # (written through the other, which is gone again)
        self._link_clock = 0
        self._forgot_at = 0  # before this clock, everything counts as changed

    def observe(self, mutation: Mutation) -> tuple[bytes, ...]:
        """Note a mutation; returns paths that now need a comparison of their own (moves)."""
        self.clock += 1
        clock = self.clock
        if len(self._names) + len(self._meta) + len(self._ranges) > MAX_REMEMBERED_CHANGES:
            self._names.clear()
            self._meta.clear()
            self._ranges.clear()
            self._forgot_at = clock
        match mutation:
            case Write(path=path, offset=offset, data=data):
                self._ranges.setdefault(path, []).append((clock, offset, offset + len(data)))
                self._data_clock = clock
            case Allocate(path=path, mode=mode, offset=offset, length=length):
                # collapsing or inserting a range moves everything after it
                shifts = mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE)
                end = UNBOUNDED if shifts else offset + length
                self._ranges.setdefault(path, []).append((clock, offset, end))
                self._data_clock = clock
            case SetAttributes(path=path, size=size):
                if size is not None:
                    self._ranges.setdefault(path, []).append((clock, size, UNBOUNDED))
                    self._data_clock = clock
                self._meta[path] = self._meta_clock = clock
            case SetXattr(path=path) | RemoveXattr(path=path):
                self._meta[path] = self._meta_clock = clock
            case Sync(path=path):
                self._meta[path] = clock
            case Rename(old=old, new=new, flags=flags):
                self._names[old] = self._names[new] = clock
                self._meta_clock = clock  # a replaced name was maybe a link of another file
                return (old, new) if flags & RENAME_EXCHANGE else (new,)
            case MakeHardLink(existing=existing, path=path):
                self._names[existing] = self._names[path] = clock
                self._meta_clock = self._link_clock = clock  # every name has one more link
                return (path,)
            case Unlink(path=path):
                self._names[path] = self._meta_clock = clock  # its other names lose a link
            case _:
                self._names[mutation.path] = clock
        return ()

    def _named_since(self, path: bytes, since: int) -> bool:
        probe = path
        while True:
            if self._names.get(probe, 0) > since:
                return True
            if probe == b".":
                return False
            probe = probe.rpartition(b"/")[0] or b"."

    def changed(self, path: bytes, since: int) -> bool:
        """What ``path`` names (it, a parent, or its attributes) changed since ``since``."""
        return (
            since < self._forgot_at
            or self._named_since(path, since)
            or self._meta.get(path, 0) > since
        )

    def attributes_changed(self, path: bytes, since: int, nlink: int) -> bool:
        """Whether ``path``'s attributes may have changed since ``since`` (through another name
        too, for a file with several)."""
        return self.changed(path, since) or (
            self._linked(nlink, since) and self._meta_clock > since
        )

    def _linked(self, nlink: int, since: int) -> bool:
        return nlink > 1 or self._link_clock > since

    def changed_blocks(self, path: bytes, since: int, nlink: int) -> list[tuple[int, int]] | None:
        """Byte ranges of ``path`` changed since ``since``; None: possibly all of it."""
        if since < self._forgot_at or self._named_since(path, since):
            return None
        if self._linked(nlink, since) and self._data_clock > since:
            return None
        return [(start, end) for clock, start, end in self._ranges.get(path, ()) if clock > since]
