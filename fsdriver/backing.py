"""The backing tree seen from the passthrough: the small synchronous steps its handlers are made
of (attributes for the kernel, the owner and mode a new object gets, finding a lost name),
each relative to the directory's descriptor opened before the mount hid it."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable

import pyfuse3

from tandem.fsdriver.inode import Key, Node
from tandem.fsdriver.mutation import Stamp

log = logging.getLogger(__name__)


def key_of(st: os.stat_result) -> Key:
    return (st.st_dev, st.st_ino)


def stamp_of(path: bytes, st: os.stat_result) -> Stamp:
    return Stamp(path, st.st_atime_ns, st.st_mtime_ns)


def entry_attributes(
    st: os.stat_result, ino: int, entry_timeout: float, attr_timeout: float
) -> pyfuse3.EntryAttributes:
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = ino
    entry.generation = 0
    entry.entry_timeout = entry_timeout
    entry.attr_timeout = attr_timeout
    entry.st_mode = st.st_mode
    entry.st_nlink = st.st_nlink
    entry.st_uid = st.st_uid
    entry.st_gid = st.st_gid
    entry.st_rdev = st.st_rdev
    entry.st_size = st.st_size
    entry.st_blksize = st.st_blksize
    entry.st_blocks = st.st_blocks
    entry.st_atime_ns = st.st_atime_ns
    entry.st_mtime_ns = st.st_mtime_ns
    entry.st_ctime_ns = st.st_ctime_ns
    return entry


def find_by_scanning(root_fd: int, node: Node) -> bytes | None:
    """A name of ``node`` anywhere in the tree (a hard link the kernel never looked up)."""
    pending: list[bytes] = [b"."]
    while pending:
        directory = pending.pop()
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd)
        except OSError:
            continue
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    name = os.fsencode(entry.name)
                    path = name if directory == b"." else directory + b"/" + name
                    st = entry.stat(follow_symlinks=False)
                    if key_of(st) == node.key:
                        log.info("found a name for inode %d by scanning: %r", node.ino, path)
                        return path
                    if stat.S_ISDIR(st.st_mode) and st.st_dev == node.key[0]:
                        pending.append(path)
        finally:
            os.close(fd)
    return None


Locate = Callable[[bytes], tuple[int, bytes]]  # `BackingTree.locate`: (dir fd, relative path)


def _lstat(locate: Locate, path: bytes) -> os.stat_result:
    dir_fd, name = locate(path)
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


def adopt_new(
    locate: Locate, path: bytes, parent_path: bytes, mode: int, uid: int, gid: int
) -> tuple[os.stat_result, tuple[Stamp, Stamp]]:
    """Give an object we created as root the owner and mode the caller would have got.
    Returns its attributes and the stamps (its own, its parent's) its mutation carries."""
    parent_st = _lstat(locate, parent_path)
    st = _lstat(locate, path)
    parent_setgid = bool(parent_st.st_mode & stat.S_ISGID)
    gid = parent_st.st_gid if parent_setgid else gid
    changed = False
    if (st.st_uid, st.st_gid) != (uid, gid):
        dir_fd, name = locate(path)
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        changed = True
    if not stat.S_ISLNK(st.st_mode):
        wanted = mode & 0o7777
        if stat.S_ISDIR(st.st_mode) and parent_setgid:
            wanted |= stat.S_ISGID
        if changed:
            st = _lstat(locate, path)  # chown as root clears set-id bits the caller may keep
        if stat.S_IMODE(st.st_mode) != wanted:
            dir_fd, name = locate(path)
            os.chmod(name, wanted, dir_fd=dir_fd)
            changed = True
    if changed:
        st = _lstat(locate, path)
    return st, (stamp_of(path, st), stamp_of(parent_path, parent_st))


def truncate(target: int | bytes, size: int, dir_fd: int | None) -> None:
    if isinstance(target, int):
        os.ftruncate(target, size)
        return
    fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
