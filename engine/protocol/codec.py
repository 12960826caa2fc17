"""The byte-level rules every frame body follows: big-endian integers, length-prefixed blobs,
and the check that a path from the peer stays inside the replicated directory."""

from __future__ import annotations

import struct


class ProtocolError(Exception):
    """The peer sent something this side will not accept; the connection must end."""


class Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def u8(self, value: int) -> None:
        self.parts.append(struct.pack(">B", value))

    def u16(self, value: int) -> None:
        self.parts.append(struct.pack(">H", value))

    def u32(self, value: int) -> None:
        self.parts.append(struct.pack(">I", value))

    def u64(self, value: int) -> None:
        self.parts.append(struct.pack(">Q", value))

    def i64(self, value: int) -> None:
        self.parts.append(struct.pack(">q", value))

    def blob(self, value: bytes) -> None:
        self.u32(len(value))
        self.parts.append(value)

    def text(self, value: str) -> None:
        self.blob(value.encode("utf-8"))

    def optional_u64(self, value: int | None) -> None:
        self.u8(value is not None)
        if value is not None:
            self.u64(value)

    def bytes(self) -> bytes:
        return b"".join(self.parts)


class Reader:
    def __init__(self, data: bytes | memoryview) -> None:
        self._data = memoryview(data)
        self._at = 0

    def _take(self, size: int) -> memoryview:
        if self._at + size > len(self._data):
            raise ProtocolError("frame body ends early")
        chunk = self._data[self._at : self._at + size]
        self._at += size
        return chunk

    def u8(self) -> int:
        return int(self._take(1)[0])

    def u16(self) -> int:
        value: int = struct.unpack(">H", self._take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack(">I", self._take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack(">Q", self._take(8))[0]
        return value

    def i64(self) -> int:
        value: int = struct.unpack(">q", self._take(8))[0]
        return value

    def blob(self) -> bytes:
        return bytes(self._take(self.u32()))

    def raw(self, size: int) -> bytes:
        return bytes(self._take(size))

    def text(self) -> str:
        try:
            return self.blob().decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("text field is not UTF-8") from None

    def optional_u64(self) -> int | None:
        present = self.u8()
        if present > 1:
            raise ProtocolError("bad presence byte")
        return self.u64() if present else None

    def at_end(self) -> bool:
        return self._at == len(self._data)

    def end(self) -> None:
        if self._at != len(self._data):
            raise ProtocolError(f"{len(self._data) - self._at} unexpected bytes after the body")


_CHECKED_PATHS: set[bytes] = set()  # the same few paths come again and again
_CHECKED_PATHS_MAX = 4096


def check_path(path: bytes) -> None:
    """A path from the peer must stay inside the replicated directory."""
    if path in _CHECKED_PATHS or path == b".":
        return
    if not path or path.startswith(b"/") or b"\0" in path:
        raise ProtocolError(f"path {path!r} is not relative")
    if any(part in (b"", b".", b"..") for part in path.split(b"/")):
        raise ProtocolError(f"path {path!r} is not normalised")
    if len(_CHECKED_PATHS) >= _CHECKED_PATHS_MAX:
        _CHECKED_PATHS.clear()
    _CHECKED_PATHS.add(path)


def decode_paths(source: Reader) -> tuple[bytes, ...]:
    paths = tuple(source.blob() for _ in range(source.u32()))
    source.end()
    for path in paths:
        check_path(path)
    return paths
