"""Opening the copy's files to change them, and keeping the descriptors a stream writes through.

A file is opened only if it is a regular file (a directory too, to sync it): a fifo would block
the receiver on open, and opening a device node acts on the host's device (a stream may create
one: a copy can hold device nodes). So the object's kind is looked at, through its parent's
descriptor, before it is opened (`open_to_change`).

That is three or four syscalls before the write and a close after it: a database writing one
4 KiB page at a time paid them on every write, and they were most of what the confined apply
cost (the replication bench in applied mode lost 10 to 17 %). The receiver is the copy's only
writer (its applications see it read-only) and a path keeps naming the same file until the
stream moves or removes a name, so `OpenFiles` keeps the descriptors it wrote through — a few
dozen, the least recently used closed first — and forgets all of them at any mutation that
moves or removes a name, and whenever the receiver applies something it did not check here
(resync repairs, a tolerant apply, the end of a session).
"""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict

from tandem.fsdriver.beneath import open_beneath, parent_of

OPENABLE = (stat.S_IFREG,)
SYNCABLE = (stat.S_IFREG, stat.S_IFDIR)
HELD = 32  # descriptors kept: a database's files and logs; the stream keeps the rest


def open_to_change(root_fd: int, path: bytes, flags: int, kinds: tuple[int, ...] = OPENABLE) -> int:
    """Open an object of the copy to change or sync it: only one of `kinds`. The receiver
    applies one change at a time, so nothing can replace the object between look and open."""
    if flags & os.O_CREAT:
        # O_EXCL: a new regular file, nothing else; openat2 refuses a mode without O_CREAT,
        # and a created file's mode is set after its owner
        return open_beneath(root_fd, path, flags | os.O_NOFOLLOW, 0o600)
    with parent_of(root_fd, path) as (parent, name):
        kind = stat.S_IFMT(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
        if kind == stat.S_IFLNK:  # as openat2 says of a symlink on the way: a violation
            raise OSError(errno.ELOOP, "a symlink: not followed")
        if kind not in kinds:
            raise OSError(errno.EINVAL, "not a regular file: not opened")
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)


class OpenFiles:
    """Write descriptors of regular files of one copy, by path, most recently used last."""

    def __init__(self, root_fd: int, held: int = HELD) -> None:
        self._root_fd = root_fd
        self._held = held
        self._fds: OrderedDict[bytes, int] = OrderedDict()

    def writable(self, path: bytes) -> int:
        """A descriptor open for writing on the regular file at `path` (kept: do not close)."""
        fd = self._fds.get(path)
        if fd is not None:
            self._fds.move_to_end(path)
            return fd
        fd = open_to_change(self._root_fd, path, os.O_WRONLY)
        self._keep(path, fd)
        return fd

    def created(self, path: bytes) -> int:
        """Create the regular file at `path` (it must not exist) and keep its descriptor: what
        a create is followed by (its owner, its mode, its first writes) goes through it."""
        fd = open_to_change(self._root_fd, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        self._keep(path, fd)
        return fd

    def _keep(self, path: bytes, fd: int) -> None:
        self._fds[path] = fd
        if len(self._fds) > self._held:
            os.close(self._fds.popitem(last=False)[1])

    def held(self, path: bytes) -> int | None:
        """The descriptor kept for `path`, if any (for calls that take one instead of a path)."""
        return self._fds.get(path)

    def forget(self) -> None:
        """Close every descriptor: a name may now lead to another object."""
        while self._fds:
            os.close(self._fds.popitem()[1])

    def __len__(self) -> int:
        return len(self._fds)
