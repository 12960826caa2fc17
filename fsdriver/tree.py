"""Where an inode the kernel knows is in the backing tree: its path (from the inode table), or,
for an object with no name left, an open descriptor; and what a change to it tells the journal
first. All synchronous: these run inside a handler's atomic step."""

from __future__ import annotations

import errno
import os
from collections import OrderedDict
from typing import Any

from pyfuse3 import FUSEError

from tandem.fsdriver.backing import find_by_scanning, key_of, stamp_of
from tandem.fsdriver.beneath import LONG_PATH, open_directory_beneath
from tandem.fsdriver.change import NO_RECORDER, Change, ChangeKind, ChangeRecorder
from tandem.fsdriver.inode import ROOT_INODE, InodeTable
from tandem.fsdriver.mutation import Stamp

# directories kept open for paths too long for one call: bounded, and dropped at any rename or
# rmdir (a kept descriptor must never name another place than its path)
_KEPT_DIRECTORIES = 8


class BackingTree:
    def __init__(self, root_fd: int, table: InodeTable, recorder: ChangeRecorder) -> None:
        self.root_fd = root_fd
        self.table = table
        self.recorder = recorder
        self.fds_by_ino: dict[int, set[int]] = {}
        # O_PATH descriptors on removed fifos, sockets, devices and directories the kernel still
        # references: it opens those without us, so nothing else would let us reach them
        self.orphans: dict[int, int] = {}
        self._directories: OrderedDict[bytes, int] = OrderedDict()

    def locate(self, path: bytes) -> tuple[int, bytes]:
        """(directory descriptor, path relative to it) for a ``*at`` call on ``path``: the root
        and the path itself, or, for a path longer than one call takes, its directory (opened
        beneath the root through no symlink, and kept a while) and its last name."""
        if len(path) < LONG_PATH:
            return self.root_fd, path
        head, _, name = path.rpartition(b"/")
        fd = self._directories.get(head)
        if fd is None:
            fd = open_directory_beneath(self.root_fd, head)
            self._directories[head] = fd
            if len(self._directories) > _KEPT_DIRECTORIES:
                os.close(self._directories.popitem(last=False)[1])
        else:
            self._directories.move_to_end(head)
        return fd, name

    def moved_or_removed(self) -> None:
        """A rename or rmdir happened: a kept directory may no longer be at its path."""
        while self._directories:
            os.close(self._directories.popitem()[1])

    def lstat(self, path: bytes) -> os.stat_result:
        fd, name = self.locate(path)
        return os.stat(name, dir_fd=fd, follow_symlinks=False)

    def path(self, ino: int) -> bytes:
        path = self.table.path(ino)
        if path is None:
            raise FUSEError(errno.ENOENT)
        return path

    def child(self, parent: int, name: bytes) -> bytes:
        path = self.table.child_path(parent, name)
        if path is None:
            raise FUSEError(errno.ENOENT)
        return path

    def any_fd(self, ino: int) -> int | None:
        fds = self.fds_by_ino.get(ino)
        return next(iter(fds)) if fds else None

    def reach(self, ino: int) -> tuple[int | bytes, int | None, bool]:
        """How to act on an object without a handle: (path or fd, dir_fd, follow symlinks)."""
        path = self.table.path(ino)
        if path is not None:
            dir_fd, name = self.locate(path)
            return name, dir_fd, False
        fd = self.any_fd(ino)
        if fd is not None:
            return fd, None, True
        orphan = self.orphans.get(ino)
        if orphan is not None:
            return b"/proc/self/fd/%d" % orphan, None, True
        raise FUSEError(errno.ENOENT)

    def stat_node(self, ino: int) -> os.stat_result:
        """Attributes of an object, even one that was removed while in use."""
        target, dir_fd, follow = self.reach(ino)
        st = os.stat(target, dir_fd=dir_fd, follow_symlinks=follow)
        if ino == ROOT_INODE or key_of(st) == self.table.get(ino).key:
            return st
        raise FUSEError(errno.ESTALE)

    def mutation_path(self, ino: int, nlink: int) -> bytes | None:
        """Where a peer finds this object, or None when it has no name left (its changes can
        no longer reach any file that survives, so they need not be replicated)."""
        path = self.table.path(ino)
        if path is not None or nlink == 0:
            return path
        # A hard link we never looked up keeps the object alive: find it by scanning.
        node = self.table.get(ino)
        return find_by_scanning(self.root_fd, node)

    def name_for_journal(self, ino: int, fd: int | None = None) -> bytes | None:
        """The path a change to ``ino`` is about to touch, found *before* the change (the
        journal must hear of it first). None: no name left, nothing a peer could see."""
        if self.recorder is NO_RECORDER:
            return None  # nobody listens: spare the lookup (it may scan for a hard link)
        path = self.table.path(ino)
        if path is not None:
            return path
        nlink = os.fstat(fd).st_nlink if fd is not None else self.stat_node(ino).st_nlink
        return self.mutation_path(ino, nlink)

    def intend(self, kind: ChangeKind, path: bytes | None, nlink: int = 1, **where: Any) -> None:
        if path is not None:
            if nlink > 1:
                # the journal names changes by path: this file's other names never show
                self.recorder.intend(Change(ChangeKind.SHARED, path))
            self.recorder.intend(Change(kind, path, **where))

    def links_of(self, inode: int) -> int:
        """How many names the object has (only asked when a journal listens)."""
        if self.recorder is NO_RECORDER:
            return 1
        try:
            return self.stat_node(inode).st_nlink
        except OSError:
            return 1

    def parent_stamp(self, parent: int) -> Stamp:
        path = self.path(parent)
        return stamp_of(path, self.lstat(path))
