"""The bodies of RESULT frames: a directory listing and a file's block hashes.

Integers are big-endian, as everywhere in the protocol, from protocol version 4 on; version 3
wrote these two bodies little-endian, and a connection that agreed on 3 still reads and writes
them that way, so a node can be upgraded while its peer runs the older release.
"""

from __future__ import annotations

import stat
import struct
import sys
from array import array
from dataclasses import dataclass

from tandem.engine.protocol.codec import ProtocolError

FIRST_BIG_ENDIAN_RESULTS = 4  # the protocol version from which these bodies are big-endian
MISSING, NOT_A_FILE, FOUND = 0, 1, 2  # BlockHashes.status
_ENTRY = "HIIIQqQQIHQ"
_HASHES = "BQQII"
_LAYOUTS = {
    order: (struct.Struct(order + _ENTRY), struct.Struct(order + _HASHES)) for order in "<>"
}


class SurveyError(ProtocolError):
    """A malformed listing or hash reply: the peer is not to be believed."""


@dataclass(frozen=True, slots=True)
class Entry:
    name: bytes  # b"" is the surveyed object itself
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    rdev: int
    xattrs: int  # digest of the extended attributes (0: none)
    nlink: int
    target: bytes = b""
    content: int = 0  # digest of a small file's content, read with the listing (0: none)

    @property
    def kind(self) -> int:
        return stat.S_IFMT(self.mode)

    def same_object(self, other: Entry) -> bool:
        """Same type, and where a type has an identity of its own (link target, device)."""
        return (self.kind, self.target, self.rdev) == (other.kind, other.target, other.rdev)

    def same_attributes(self, other: Entry) -> bool:
        mode = stat.S_IMODE(self.mode) if self.kind != stat.S_IFLNK else 0
        theirs = stat.S_IMODE(other.mode) if other.kind != stat.S_IFLNK else 0
        return (mode, self.uid, self.gid, self.xattrs) == (
            theirs,
            other.uid,
            other.gid,
            other.xattrs,
        )


@dataclass(frozen=True)
class BlockHashes:
    status: int  # MISSING, NOT_A_FILE or FOUND
    size: int
    hashes: array[int]  # of the blocks from the asked offset
    ino: int = 0  # which file this is on its side (hard links share it)
    nlink: int = 0


def _order(version: int) -> str:
    return ">" if version >= FIRST_BIG_ENDIAN_RESULTS else "<"


def encode_entries(entries: list[Entry] | None, version: int) -> bytes:
    """A listing; b"" says the path does not exist (None)."""
    if entries is None:
        return b""
    layout = _LAYOUTS[_order(version)][0]
    parts = []
    for e in entries:
        parts.append(
            layout.pack(
                len(e.name),
                e.mode,
                e.uid,
                e.gid,
                e.size,
                e.mtime_ns,
                e.rdev,
                e.xattrs,
                e.nlink,
                len(e.target),
                e.content,
            )
        )
        parts.append(e.name)
        parts.append(e.target)
    return b"".join(parts)


def decode_entries(data: bytes, version: int) -> list[Entry] | None:
    if not data:
        return None
    layout = _LAYOUTS[_order(version)][0]
    entries: list[Entry] = []
    position = 0
    while position < len(data):
        if position + layout.size > len(data):
            raise SurveyError("a directory entry ends early")
        (name_len, mode, uid, gid, size, mtime, rdev, xattrs, nlink, target_len, content) = (
            layout.unpack_from(data, position)
        )
        position += layout.size
        name = data[position : position + name_len]
        target = data[position + name_len : position + name_len + target_len]
        position += name_len + target_len
        if len(name) != name_len or len(target) != target_len:
            raise SurveyError("a directory entry ends early")
        if (entries and (not name or b"/" in name or name in (b".", b".."))) or (
            not entries and name
        ):
            raise SurveyError(f"bad entry name {name!r}")
        entries.append(
            Entry(name, mode, uid, gid, size, mtime, rdev, xattrs, nlink, target, content)
        )
    return entries


def encode_hashes(result: BlockHashes, version: int) -> bytes:
    order = _order(version)
    hashes = result.hashes
    if sys.byteorder != ("big" if order == ">" else "little"):
        hashes = array("Q", hashes)
        hashes.byteswap()
    header = _LAYOUTS[order][1].pack(
        result.status, result.size, result.ino, result.nlink, len(hashes)
    )
    return header + hashes.tobytes()


def decode_hashes(data: bytes, version: int) -> BlockHashes:
    order = _order(version)
    layout = _LAYOUTS[order][1]
    if len(data) < layout.size:
        raise SurveyError("a hash reply ends early")
    status, size, ino, nlink, count = layout.unpack_from(data)
    if status not in (MISSING, NOT_A_FILE, FOUND) or len(data) != layout.size + 8 * count:
        raise SurveyError("a malformed hash reply")
    hashes = array("Q")
    hashes.frombytes(data[layout.size :])
    if sys.byteorder != ("big" if order == ">" else "little"):
        hashes.byteswap()
    return BlockHashes(status, size, hashes, ino, nlink)
