"""What a resync compares, read the same way on both nodes: a directory's entries (names, types,
modes, owners, sizes, times, link targets, a digest of the extended attributes) and a file's
per-block hashes. Their wire form is `tandem.engine.protocol.results`'."""

from __future__ import annotations

import errno
import os
import stat
import struct
from array import array
from collections.abc import Iterator
from contextlib import contextmanager

import xxhash

from tandem.engine.protocol.results import FOUND, MISSING, NOT_A_FILE, BlockHashes, Entry
from tandem.fsdriver.beneath import object_at, open_beneath, parent_of
from tandem.native.blockhash import hash_blocks

SMALL_FILE = 64 << 10  # files up to this size have their content digest in a listing


def xattr_items(root_fd: int, path: bytes) -> tuple[tuple[bytes, bytes], ...]:
    try:
        with object_at(root_fd, path) as target:
            return _xattrs_of(target)
    except OSError:
        return ()  # gone meanwhile, or reached through a symlink: nothing to compare


def _xattrs_of(target: bytes) -> tuple[tuple[bytes, bytes], ...]:
    try:
        names = sorted(os.fsencode(n) for n in os.listxattr(target))
        return tuple((n, os.getxattr(target, n)) for n in names)
    except OSError:
        return ()  # symlinks on some filesystems, or gone meanwhile: nothing to compare


def _digest(items: tuple[tuple[bytes, bytes], ...]) -> int:
    if not items:
        return 0
    hasher = xxhash.xxh3_64()
    for name, value in items:
        hasher.update(struct.pack("<II", len(name), len(value)) + name + value)
    return hasher.intdigest() or 1


def entry_of(dir_fd: int, name: bytes, shown: bytes, st: os.stat_result) -> Entry:
    """The entry of ``name`` in the directory ``dir_fd`` (already resolved beneath the copy's
    root), listed as ``shown``."""
    is_link = stat.S_ISLNK(st.st_mode)
    xattrs = 0
    if not is_link:
        with object_at(dir_fd, name) as target:
            xattrs = _digest(_xattrs_of(target))
    return Entry(
        name=shown,
        mode=st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size if stat.S_ISREG(st.st_mode) else 0,
        mtime_ns=st.st_mtime_ns,
        rdev=st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0,
        xattrs=xattrs,
        nlink=st.st_nlink,
        target=os.readlink(name, dir_fd=dir_fd) if is_link else b"",
        content=_content_digest(dir_fd, name, st),
    )


def _content_digest(dir_fd: int, name: bytes, st: os.stat_result) -> int:
    """One read for a small file now saves a query per file later: with many small files the
    round trips, not the bytes, are what a comparison costs."""
    if not stat.S_ISREG(st.st_mode) or not 0 < st.st_size <= SMALL_FILE:
        return 0
    try:
        fd = open_beneath(dir_fd, name, os.O_RDONLY | os.O_NOFOLLOW)
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
        # O_NONBLOCK: a fifo at the path must not hang the caller (regular files ignore it)
        fd = open_beneath(root_fd, path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
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
    when nothing is there, or when ``path`` leads through a symlink (what lies beyond is not
    the copy's). Children that vanish while being read are left out."""
    try:
        with parent_of(root_fd, path) as (parent, name):
            st = os.stat(name or b".", dir_fd=parent, follow_symlinks=False)
            found = [entry_of(parent, name or b".", b"", st)]
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EXDEV):
            return None
        raise
    if not stat.S_ISDIR(st.st_mode):
        return found
    try:
        fd = open_beneath(root_fd, path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None  # gone or replaced meanwhile
    try:
        for name in sorted(os.fsencode(n) for n in os.listdir(fd)):
            try:
                child_st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                found.append(entry_of(fd, name, name, child_st))
            except (FileNotFoundError, NotADirectoryError):
                continue
    finally:
        os.close(fd)
    return found


def hash_file_range(root_fd: int, path: bytes, offset: int, length: int, block: int) -> BlockHashes:
    try:
        fd = open_beneath(root_fd, path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
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
