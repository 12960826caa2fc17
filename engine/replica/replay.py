"""Applying a `Mutation` to a plain copy of the tree: what a secondary does with the stream.

Every call is relative to ``root_fd`` and never follows a symlink in the last component, so a
replayed stream cannot write outside the copy through a link the application created.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from tandem.fsdriver.mutation import (
    CreateFile,
    MakeDirectory,
    MakeHardLink,
    MakeNode,
    MakeSymlink,
    Mutation,
    RemoveDirectory,
    RemoveXattr,
    Rename,
    SetAttributes,
    SetXattr,
    Stamp,
    Sync,
    Unlink,
    Write,
    decode_json,
)
from tandem.fsdriver.syscall import renameat2


def _open(root_fd: int, path: bytes, flags: int) -> int:
    return os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=root_fd)


def xattr_path(root_fd: int, path: bytes) -> bytes:
    return b"/proc/self/fd/%d/%s" % (root_fd, path)


def _chmod(root_fd: int, path: bytes, mode: int) -> None:
    # chmod always follows a symlink (Linux has no lchmod): a symlink's own mode means nothing
    if not stat.S_ISLNK(os.stat(path, dir_fd=root_fd, follow_symlinks=False).st_mode):
        os.chmod(path, stat.S_IMODE(mode), dir_fd=root_fd)


def owner_and_mode(root_fd: int, path: bytes, uid: int, gid: int, mode: int | None) -> None:
    os.chown(path, uid, gid, dir_fd=root_fd, follow_symlinks=False)
    if mode is not None:
        _chmod(root_fd, path, mode)  # after chown, which clears set-id bits


def apply_stamps(root_fd: int, stamps: tuple[Stamp, ...]) -> None:
    for stamp in stamps:
        os.utime(
            stamp.path, ns=(stamp.atime_ns, stamp.mtime_ns), dir_fd=root_fd, follow_symlinks=False
        )


def apply(root_fd: int, mutation: Mutation) -> None:
    """Apply one mutation; raises OSError exactly as the syscall did."""
    apply_change(root_fd, mutation)
    apply_stamps(root_fd, mutation.stamps)


def apply_change(root_fd: int, mutation: Mutation) -> None:
    """The mutation without its stamps."""
    match mutation:
        case Write(path=path, offset=offset, data=data):
            fd = _open(root_fd, path, os.O_WRONLY)
            try:
                view = memoryview(data)
                while view:
                    written = os.pwrite(fd, view, offset)
                    view, offset = view[written:], offset + written
            finally:
                os.close(fd)
        case SetAttributes(path=path, mode=mode, uid=uid, gid=gid, size=size):
            if size is not None:
                fd = _open(root_fd, path, os.O_WRONLY)
                try:
                    os.ftruncate(fd, size)
                finally:
                    os.close(fd)
            if uid is not None or gid is not None:
                os.chown(
                    path,
                    -1 if uid is None else uid,
                    -1 if gid is None else gid,
                    dir_fd=root_fd,
                    follow_symlinks=False,
                )
            if mode is not None:
                _chmod(root_fd, path, mode)
        case CreateFile(path=path, mode=mode, uid=uid, gid=gid):
            os.close(_open(root_fd, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
            owner_and_mode(root_fd, path, uid, gid, mode)
        case MakeDirectory(path=path, mode=mode, uid=uid, gid=gid):
            os.mkdir(path, 0o700, dir_fd=root_fd)
            owner_and_mode(root_fd, path, uid, gid, mode)
        case MakeNode(path=path, mode=mode, rdev=rdev, uid=uid, gid=gid):
            os.mknod(path, stat.S_IFMT(mode) | 0o600, rdev, dir_fd=root_fd)
            owner_and_mode(root_fd, path, uid, gid, mode)
        case MakeSymlink(path=path, target=target, uid=uid, gid=gid):
            os.symlink(target, path, dir_fd=root_fd)
            owner_and_mode(root_fd, path, uid, gid, None)
        case MakeHardLink(existing=existing, path=path):
            os.link(existing, path, src_dir_fd=root_fd, dst_dir_fd=root_fd, follow_symlinks=False)
        case Unlink(path=path):
            os.unlink(path, dir_fd=root_fd)
        case RemoveDirectory(path=path):
            os.rmdir(path, dir_fd=root_fd)
        case Rename(old=old, new=new, flags=flags):
            renameat2(root_fd, old, root_fd, new, flags)
        case SetXattr(path=path, name=name, value=value):
            os.setxattr(xattr_path(root_fd, path), name, value, follow_symlinks=False)
        case RemoveXattr(path=path, name=name):
            os.removexattr(xattr_path(root_fd, path), name, follow_symlinks=False)
        case Sync(path=path, data_only=data_only):
            fd = _open(root_fd, path, os.O_RDONLY)
            try:
                (os.fdatasync if data_only else os.fsync)(fd)
            finally:
                os.close(fd)
        case _:
            raise TypeError(f"not a mutation: {mutation!r}")


def replay_recording(lines: Iterable[str], root_dir: str | os.PathLike[str]) -> int:
    """Apply a recorded stream (JSON lines, as ``tandem mount --record`` writes) onto the copy
    at ``root_dir``; returns how many mutations were applied."""
    root_fd = os.open(root_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    count = 0
    try:
        for line in lines:
            apply(root_fd, decode_json(line))
            count += 1
    finally:
        os.close(root_fd)
    return count
