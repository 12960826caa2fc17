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


def open_beneath(root_fd: int, path: bytes, flags: int, mode: int = 0) -> int:
    """``open`` of ``path`` beneath ``root_fd``; a symlink in any component (the last one
    included: add ``O_PATH | O_NOFOLLOW`` to get the link itself) fails with ELOOP."""
    return openat2(root_fd, path or b".", flags | os.O_CLOEXEC, mode, CONFINED)


@contextmanager
def parent_of(root_fd: int, path: bytes) -> Iterator[tuple[int, bytes]]:
    """The descriptor of ``path``'s directory (resolved beneath ``root_fd``) and its last
    component, for a ``*at`` call that must not follow a symlink on the way."""
    head, _, name = path.rpartition(b"/")
    if not head:
        yield root_fd, name
        return
    fd = openat2(root_fd, head, _DIRECTORY, 0, CONFINED)
    try:
        yield fd, name
    finally:
        os.close(fd)


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
