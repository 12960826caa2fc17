"""What a secondary in ``durable`` mode syncs before acknowledging a batch.

A `syncfs` of the whole filesystem was simple and always right, but it writes back every dirty
page of that filesystem, the other applications' too (in the lab, the primary's own copy on the
same disk): durable mode ran 4 to 6 times slower than applied mode. Syncing only what the batch
touched (each written file, each directory whose entries changed) costs one journal commit in
the common case (lab, SQLite commits in durable mode: 37 -> 131 to 136 tx/s). Paths only name
the right objects while no name in the batch moved: a batch with a rename, or with resync
repairs, falls back to `syncfs` (decision D22).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from tandem.engine.protocol.items import StreamItem
from tandem.engine.protocol.queries import ProgressNote
from tandem.fsdriver.beneath import lstat_beneath, open_beneath
from tandem.fsdriver.mutation import (
    Allocate,
    CreateFile,
    MakeDirectory,
    MakeHardLink,
    MakeNode,
    MakeSymlink,
    RemoveDirectory,
    RemoveXattr,
    SetAttributes,
    SetXattr,
    Sync,
    Unlink,
    Write,
)
from tandem.fsdriver.syscall import syncfs

MAX_SEPARATE_SYNCS = 16  # beyond, one syncfs is cheaper than that many journal round trips


@dataclass
class SyncTargets:
    files: set[bytes] = field(default_factory=set)
    directories: set[bytes] = field(default_factory=set)


def _parent(path: bytes) -> bytes:
    return path.rpartition(b"/")[0] or b"."


def sync_targets(items: list[StreamItem]) -> SyncTargets | None:
    """The files and directories to sync for ``items`` to be durable; None: sync everything."""
    targets = SyncTargets()
    for item in items:
        match item:
            case Write(path=path) | SetAttributes(path=path) | Sync(path=path):
                targets.files.add(path)
            case Allocate(path=path):
                targets.files.add(path)
            case SetXattr(path=path) | RemoveXattr(path=path):
                targets.files.add(path)
            case MakeHardLink(existing=existing, path=path):
                targets.files.add(existing)  # its link count
                targets.directories.add(_parent(path))
            case (
                CreateFile(path=path)
                | MakeDirectory(path=path)
                | MakeNode(path=path)
                | MakeSymlink(path=path)
                | Unlink(path=path)
                | RemoveDirectory(path=path)
            ):
                targets.directories.add(_parent(path))
            case ProgressNote():
                pass
            case _:  # renames and resync repairs move names: a path may no longer name its object
                return None
        for stamp in getattr(item, "stamps", ()):
            targets.files.add(stamp.path)
    if len(targets.files) + len(targets.directories) > MAX_SEPARATE_SYNCS:
        return None
    return targets


def make_durable(root_fd: int, items: list[StreamItem]) -> None:
    targets = sync_targets(items)
    if targets is None:
        syncfs(root_fd)
        return
    directories = set(targets.directories)
    for path in targets.files - directories:
        try:
            st = lstat_beneath(root_fd, path)
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed later in the batch: its parent directory is synced
        if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
            _sync(root_fd, path)
        else:
            # opening a fifo or a device would block or act on the device: their attributes
            # go to disk with the directory's journal commit
            directories.add(_parent(path))
    for path in directories:
        _sync(root_fd, path)


def _sync(root_fd: int, path: bytes) -> None:
    try:
        fd = open_beneath(root_fd, path, os.O_RDONLY | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return  # gone with a later change of the batch, which its parent's sync covers
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
