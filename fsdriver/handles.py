"""What an open file or directory handle of the passthrough holds."""

from __future__ import annotations


class OpenFile:
    __slots__ = ("append", "fd", "ino")

    def __init__(self, fd: int, ino: int, append: bool) -> None:
        self.fd = fd
        self.ino = ino
        self.append = append


class OpenDir:
    __slots__ = ("fd", "ino", "names")

    def __init__(self, fd: int, ino: int) -> None:
        self.fd = fd
        self.ino = ino
        self.names: list[bytes] | None = None
