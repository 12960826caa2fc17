"""What a resync compares, read the same way on both nodes: a directory's entries (names, types,
modes, owners, sizes, times, link targets, a digest of the extended attributes) and a file's
per-block hashes. Their wire form is `tandem.engine.protocol.results`'."""

from __future__ import annotations

import os
import stat
import struct
from array import array
from collections.abc import Iterator
from contextlib import contextmanager

import xxhash

from tandem.engine.protocol.results import FOUND, MISSING, NOT_A_FILE, BlockHashes, Entry
from tandem.native.blockhash import hash_blocks

SMALL_FILE = 64 << 10  # files up to this size have their content digest in a listing


def xattr_items(root_fd: int, path: bytes) -> tuple[tuple[bytes, bytes], ...]:
    target = b"/proc/self/fd/%d/%s" % (root_fd, path)
    try:
        names = sorted(os.fsencode(n) for n in os.listxattr(target, follow_symlinks=False))
        return tuple((n, os.getxattr(target, n, follow_symlinks=False)) for n in names)
    except OSError:
        return ()  # symlinks on some filesystems, or gone meanwhile: nothing to compare


def _digest(items: tuple[tuple[bytes, bytes], ...]) -> int:
    if not items:
        return 0
    hasher = xxhash.xxh3_64()
    for name, value in items:
        hasher.update(struct.pack("<II", len(name), len(value)) + name + value)
    return hasher.intdigest() or 1


def entry_of(root_fd: int, path: bytes, name: bytes, st: os.stat_result) -> Entry:
    is_link = stat.S_ISLNK(st.st_mode)
    return Entry(
        name=name,
        mode=st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size if stat.S_ISREG(st.st_mode) else 0,
        mtime_ns=st.st_mtime_ns,
        rdev=st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0,
        xattrs=0 if is_link else _digest(xattr_items(root_fd, path)),
        nlink=st.st_nlink,
        target=os.readlink(path, dir_fd=root_fd) if is_link else b"",
        content=_content_digest(root_fd, path, st),
    )


def _content_digest(root_fd: int, path: bytes, st: os.stat_result) -> int:
    """One read for a small file now saves a query per file later: with many small files the
    round trips, not the bytes, are what a comparison costs."""
    if not stat.S_ISREG(st.st_mode) or not 0 < st.st_size <= SMALL_FILE:
        return 0
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
    except OSError:
        return 0
    try:
        if os.fstat(fd).st_ino != st.st_ino:
            return 0  # replaced meanwhile
        return xxhash.xxh3_64_intdigest(os.pread(fd, SMALL_FILE + 1, 0)) or 1
    except OSError:
        return 0
    finally:
        os.close(fd)


@contextmanager
def open_regular(root_fd: int, path: bytes) -> Iterator[tuple[int, os.stat_result] | None]:
    """The regular file at ``path`` now (descriptor and status), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
    except OSError:
        yield None
        return
    try:
        st = os.fstat(fd)
        yield (fd, st) if stat.S_ISREG(st.st_mode) else None
    finally:
        os.close(fd)


def differing_blocks(mine: array[int], theirs: array[int]) -> list[int]:
    """Indices where two hash lists differ (a block only one side has differs)."""
    if mine == theirs:
        return []
    return [
        index
        for index in range(max(len(mine), len(theirs)))
        if index >= len(mine) or index >= len(theirs) or mine[index] != theirs[index]
    ]


def child_path(parent: bytes, name: bytes) -> bytes:
    return name if parent == b"." else parent + b"/" + name


def survey(root_fd: int, path: bytes) -> list[Entry] | None:
    """The object at ``path`` and, if it is a directory, its children (sorted by name); None
    when nothing is there. Children that vanish while being read are left out."""
    try:
        st = os.stat(path, dir_fd=root_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    found = [entry_of(root_fd, path, b"", st)]
    if not stat.S_ISDIR(st.st_mode):
        return found
    try:
        fd = os.open(
            path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd
        )
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        names = sorted(os.fsencode(n) for n in os.listdir(fd))
    finally:
        os.close(fd)
    for name in names:
        child = child_path(path, name)
        try:
            child_st = os.stat(child, dir_fd=root_fd, follow_symlinks=False)
            found.append(entry_of(root_fd, child, name, child_st))
        except (FileNotFoundError, NotADirectoryError):
            continue
    return found


def hash_file_range(root_fd: int, path: bytes, offset: int, length: int, block: int) -> BlockHashes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
    except (FileNotFoundError, NotADirectoryError):
        return BlockHashes(MISSING, 0, array("Q"))
    except OSError:
        return BlockHashes(NOT_A_FILE, 0, array("Q"))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return BlockHashes(NOT_A_FILE, 0, array("Q"))
        end = min(offset + length, st.st_size)
        hashes = (
            hash_blocks(fd, offset, max(0, end - offset), block) if end > offset else array("Q")
        )
        return BlockHashes(FOUND, st.st_size, hashes, st.st_ino, st.st_nlink)
    finally:
        os.close(fd)
