"""Applying a `Mutation` to a plain copy of the tree: what a secondary does with the stream.

Every path is resolved beneath ``root_fd`` through no symlink in any component
(`tandem.fsdriver.beneath`), and the last component is acted on without following it: a replayed
stream, even a hostile one, cannot reach outside the copy through a link the application (or
the stream itself) created. A path that would is refused with ELOOP or EXDEV.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from tandem.engine.replica.open_files import SYNCABLE, OpenFiles, open_to_change
from tandem.fsdriver.beneath import object_at, parent_of
from tandem.fsdriver.mutation import (
    Allocate,
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
from tandem.fsdriver.syscall import fallocate, renameat2


def _chmod(root_fd: int, path: bytes, mode: int) -> None:
    with object_at(root_fd, path) as target:
        # a symlink's own mode means nothing (Linux has no lchmod); through the descriptor the
        # object checked is the object changed
        if not stat.S_ISLNK(os.stat(target).st_mode):
            os.chmod(target, stat.S_IMODE(mode))


def chown(root_fd: int, path: bytes, uid: int, gid: int) -> None:
    with parent_of(root_fd, path) as (fd, name):
        os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)


def owner_and_mode(root_fd: int, path: bytes, uid: int, gid: int, mode: int | None) -> None:
    chown(root_fd, path, uid, gid)
    if mode is not None:
        _chmod(root_fd, path, mode)  # after chown, which clears set-id bits


def set_times(root_fd: int, path: bytes, atime_ns: int, mtime_ns: int) -> None:
    with parent_of(root_fd, path) as (fd, name):
        os.utime(name, ns=(atime_ns, mtime_ns), dir_fd=fd, follow_symlinks=False)


def apply_stamps(root_fd: int, stamps: tuple[Stamp, ...]) -> None:
    for stamp in stamps:
        set_times(root_fd, stamp.path, stamp.atime_ns, stamp.mtime_ns)


def hard_link(root_fd: int, existing: bytes, path: bytes) -> None:
    with (
        parent_of(root_fd, existing) as (old_fd, old_name),
        parent_of(root_fd, path) as (
            new_fd,
            new_name,
        ),
    ):
        os.link(old_name, new_name, src_dir_fd=old_fd, dst_dir_fd=new_fd, follow_symlinks=False)


def rename(root_fd: int, old: bytes, new: bytes, flags: int) -> None:
    with (
        parent_of(root_fd, old) as (old_fd, old_name),
        parent_of(root_fd, new) as (
            new_fd,
            new_name,
        ),
    ):
        renameat2(old_fd, old_name, new_fd, new_name, flags)


def apply(root_fd: int, mutation: Mutation, files: OpenFiles | None = None) -> None:
    """Apply one mutation; raises OSError exactly as the syscall did. With `files`, writes go
    through the descriptors it keeps (`tandem.engine.replica.open_files`)."""
    if files is None:
        apply_change(root_fd, mutation)
        apply_stamps(root_fd, mutation.stamps)
        return
    match mutation:
        case Write(path=path, offset=offset, data=data):
            _write_all(files.writable(path), data, offset)
        case Allocate(path=path, mode=mode, offset=offset, length=length):
            fallocate(files.writable(path), mode, offset, length)
        case SetAttributes(path=path, mode=None, uid=None, gid=None, size=int(size)):
            os.ftruncate(files.writable(path), size)
        case CreateFile(path=path, mode=mode, uid=uid, gid=gid):
            fd = files.created(path)
            os.fchown(fd, uid, gid)
            os.fchmod(fd, stat.S_IMODE(mode))  # after chown, which clears set-id bits
        case Unlink() | RemoveDirectory() | Rename():  # a name may now lead elsewhere
            files.forget()
            apply_change(root_fd, mutation)
        case _:
            apply_change(root_fd, mutation)
    for stamp in mutation.stamps:
        held = files.held(stamp.path)
        if held is None:
            set_times(root_fd, stamp.path, stamp.atime_ns, stamp.mtime_ns)
        else:  # the very file the path names: a regular file, checked when it was opened
            os.utime(held, ns=(stamp.atime_ns, stamp.mtime_ns))


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def apply_change(root_fd: int, mutation: Mutation) -> None:
    """The mutation without its stamps."""
    match mutation:
        case Write(path=path, offset=offset, data=data):
            fd = open_to_change(root_fd, path, os.O_WRONLY)
            try:
                _write_all(fd, data, offset)
            finally:
                os.close(fd)
        case SetAttributes(path=path, mode=mode, uid=uid, gid=gid, size=size):
            if size is not None:
                fd = open_to_change(root_fd, path, os.O_WRONLY)
                try:
                    os.ftruncate(fd, size)
                finally:
                    os.close(fd)
            if uid is not None or gid is not None:
                chown(root_fd, path, -1 if uid is None else uid, -1 if gid is None else gid)
            if mode is not None:
                _chmod(root_fd, path, mode)
        case CreateFile(path=path, mode=mode, uid=uid, gid=gid):
            os.close(open_to_change(root_fd, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
            owner_and_mode(root_fd, path, uid, gid, mode)
        case MakeDirectory(path=path, mode=mode, uid=uid, gid=gid):
            with parent_of(root_fd, path) as (fd, name):
                os.mkdir(name, 0o700, dir_fd=fd)
            owner_and_mode(root_fd, path, uid, gid, mode)
        case MakeNode(path=path, mode=mode, rdev=rdev, uid=uid, gid=gid):
            with parent_of(root_fd, path) as (fd, name):
                os.mknod(name, stat.S_IFMT(mode) | 0o600, rdev, dir_fd=fd)
            owner_and_mode(root_fd, path, uid, gid, mode)
        case MakeSymlink(path=path, target=target, uid=uid, gid=gid):
            with parent_of(root_fd, path) as (fd, name):
                os.symlink(target, name, dir_fd=fd)
            owner_and_mode(root_fd, path, uid, gid, None)
        case MakeHardLink(existing=existing, path=path):
            hard_link(root_fd, existing, path)
        case Unlink(path=path):
            with parent_of(root_fd, path) as (fd, name):
                os.unlink(name, dir_fd=fd)
        case RemoveDirectory(path=path):
            with parent_of(root_fd, path) as (fd, name):
                os.rmdir(name, dir_fd=fd)
        case Rename(old=old, new=new, flags=flags):
            rename(root_fd, old, new, flags)
        case SetXattr(path=path, name=name, value=value):
            with object_at(root_fd, path) as target:
                os.setxattr(target, name, value)
        case RemoveXattr(path=path, name=name):
            with object_at(root_fd, path) as target:
                os.removexattr(target, name)
        case Allocate(path=path, mode=mode, offset=offset, length=length):
            fd = open_to_change(root_fd, path, os.O_WRONLY)
            try:
                fallocate(fd, mode, offset, length)
            finally:
                os.close(fd)
        case Sync(path=path, data_only=data_only):
            fd = open_to_change(root_fd, path, os.O_RDONLY, SYNCABLE)
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
