"""Resolving a path received from elsewhere strictly beneath a directory, through no symlink.

A path in a replication stream, a resync or a `verify` answer names an object inside one copy.
The copy itself may hold symlinks (the application made them, or a hostile stream did), and a
plain ``*at`` call follows a symlink in any component but the last: ``evil/passwd`` with
``evil -> /etc`` would reach ``/etc/passwd``. Here every component but the last is resolved
with ``openat2`` and ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS``: a
symlink anywhere on the way, or ``..``, fails with ELOOP or EXDEV instead of leaving the tree.
The last component is then acted on through its parent's descriptor by the caller, with the
call's own no-follow flag (``AT_SYMLINK_NOFOLLOW``, ``O_NOFOLLOW``), so an operation on a
symlink touches the link, never its target.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from tandem.fsdriver.syscall import (
    RESOLVE_BENEATH,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    openat2,
)

CONFINED = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
_DIRECTORY = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
# A path the kernel takes in one call must be shorter than PATH_MAX (4096). A path relative to
# the copy's root can be longer, legally: an application deep in the tree names things
# relative to its own directory. Longer ones are walked in pieces below this length.
LONG_PATH = 3800


def _pieces(path: bytes) -> list[bytes]:
    """``path`` cut at slashes into runs of components, each shorter than LONG_PATH."""
    pieces: list[bytes] = []
    current: list[bytes] = []
    length = 0
    for part in path.split(b"/"):
        if current and length + 1 + len(part) >= LONG_PATH:
            pieces.append(b"/".join(current))
            current, length = [], 0
        current.append(part)
        length += len(part) + (1 if length else 0)
    pieces.append(b"/".join(current))
    return pieces


def open_directory_beneath(root_fd: int, path: bytes) -> int:
    """An ``O_PATH`` descriptor of the directory ``path`` beneath ``root_fd``, through no
    symlink, however long ``path`` is (walked in pieces, each confined to the last)."""
    if len(path) < LONG_PATH:
        return openat2(root_fd, path or b".", _DIRECTORY, 0, CONFINED)
    fd = root_fd
    for piece in _pieces(path):
        deeper = openat2(fd, piece, _DIRECTORY, 0, CONFINED)
        if fd != root_fd:
            os.close(fd)
        fd = deeper
    return fd


def open_beneath(root_fd: int, path: bytes, flags: int, mode: int = 0) -> int:
    """``open`` of ``path`` beneath ``root_fd``; a symlink in any component (the last one
    included: add ``O_PATH | O_NOFOLLOW`` to get the link itself) fails with ELOOP."""
    if len(path) < LONG_PATH:
        return openat2(root_fd, path or b".", flags | os.O_CLOEXEC, mode, CONFINED)
    head, _, name = path.rpartition(b"/")
    parent = open_directory_beneath(root_fd, head)
    try:
        return openat2(parent, name, flags | os.O_CLOEXEC, mode, CONFINED)
    finally:
        os.close(parent)


class _Parent:
    """`parent_of`'s context manager: a class, not a generator, since every applied mutation
    enters one or more (a generator-based one cost the receiver microseconds per write)."""

    __slots__ = ("_fd", "_path", "_root")

    def __init__(self, root_fd: int, path: bytes) -> None:
        self._root, self._path, self._fd = root_fd, path, -1

    def __enter__(self) -> tuple[int, bytes]:
        head, _, name = self._path.rpartition(b"/")
        if not head:
            return self._root, name
        self._fd = open_directory_beneath(self._root, head)
        return self._fd, name

    def __exit__(self, *exc_info: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def parent_of(root_fd: int, path: bytes) -> _Parent:
    """The descriptor of ``path``'s directory (resolved beneath ``root_fd``) and its last
    component, for a ``*at`` call that must not follow a symlink on the way."""
    return _Parent(root_fd, path)


@contextmanager
def object_at(root_fd: int, path: bytes) -> Iterator[bytes]:
    """A ``/proc/self/fd`` path naming exactly the object at ``path`` (the link itself when it
    is a symlink), for the calls that have no ``*at`` form: the xattr family. The caller uses
    it *with* following: it follows only the descriptor's magic link, to the object."""
    fd = open_beneath(root_fd, path, os.O_PATH | os.O_NOFOLLOW)
    try:
        yield b"/proc/self/fd/%d" % fd
    finally:
        os.close(fd)


def lstat_beneath(root_fd: int, path: bytes) -> os.stat_result:
    with parent_of(root_fd, path) as (fd, name):
        return os.stat(name or b".", dir_fd=fd, follow_symlinks=False)


def read_link(root_fd: int, path: bytes) -> bytes:
    with parent_of(root_fd, path) as (fd, name):
        return os.readlink(name, dir_fd=fd)
