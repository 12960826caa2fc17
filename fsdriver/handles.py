"""What an open file or directory handle of the passthrough holds."""

from __future__ import annotations


class OpenFile:
    __slots__ = ("append", "fd", "ino", "synchronous")

    def __init__(self, fd: int, ino: int, append: bool, synchronous: bool = False) -> None:
        self.fd = fd
        self.ino = ino
        self.append = append
        self.synchronous = synchronous  # opened O_SYNC or O_DSYNC: each write is an fdatasync


class OpenDir:
    __slots__ = ("fd", "ino", "names")

    def __init__(self, fd: int, ino: int) -> None:
        self.fd = fd
        self.ino = ino
        self.names: list[bytes] | None = None
