"""Keeping a copy's own changes aside before a primary's versions replace them.

A copy that changed paths since it last agreed with the primary (it served alone, or went on
alone and lost the role) holds writes the primary may not have. Its journal names them; before
the resync overwrites them, each one is copied to ``<aside>/<stamp>-<label>/`` with a REPORT.txt
saying why and what was there. Only those paths, not the whole copy, and only if the disk has
room for them plus a margin: else nothing is overwritten (`AsideShort`, worded for the
operator).

Paths are walked one component at a time without following symlinks (a symlink is kept as a
symlink), so nothing outside the copy is read.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass

ASIDE_MARGIN = 64 << 20  # free space left once the paths are kept
CHUNK = 1 << 20


class AsideShort(Exception):
    """The changes cannot be kept aside (the disk is short, or the place cannot be written)."""


@dataclass(frozen=True)
class Found:
    path: bytes
    kind: str  # "file", "symlink", "directory", "other" or "gone"
    size: int


def keep_aside(root_fd: int, paths: list[bytes], aside_root: str, why: str, label: str) -> str:
    """Copy ``paths`` (relative to the copy) aside; returns the directory they went to."""
    found = [_look(root_fd, path) for path in paths]
    needed = sum(item.size for item in found if item.kind == "file")
    try:
        os.makedirs(aside_root, mode=0o700, exist_ok=True)
        free = _free_bytes(aside_root)
    except OSError as exc:
        raise AsideShort(
            f"cannot keep this copy's changes in {aside_root}: {exc.strerror}"
        ) from None
    if needed + ASIDE_MARGIN > free:
        raise AsideShort(
            f"cannot keep this copy's {len(paths)} changed path(s) aside: they need "
            f"{needed >> 20} MiB and {aside_root} has {free >> 20} MiB free; nothing is "
            "overwritten until there is room"
        )
    target = os.path.join(aside_root, f"{time.strftime('%Y%m%d-%H%M%S')}-{label}")
    suffix = 0
    while os.path.exists(target + (f".{suffix}" if suffix else "")):
        suffix += 1
    target += f".{suffix}" if suffix else ""
    try:
        os.makedirs(target, mode=0o700)
        for item in found:
            _copy(root_fd, item, target)
        _report(target, why, found)
    except OSError as exc:
        raise AsideShort(f"keeping this copy's changes in {target} failed: {exc}") from None
    return target


def _components(path: bytes) -> list[bytes]:
    parts = [part for part in path.split(b"/") if part not in (b"", b".")]
    if b".." in parts:
        raise ValueError(f"not a path inside the copy: {path!r}")
    return parts


def _open_parent(root_fd: int, parts: list[bytes]) -> int:
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            following = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = following
    except BaseException:
        os.close(fd)
        raise
    return fd


def _look(root_fd: int, path: bytes) -> Found:
    try:
        parts = _components(path)
    except ValueError:
        return Found(path, "gone", 0)
    if not parts:
        return Found(path, "directory", 0)
    try:
        parent = _open_parent(root_fd, parts)
    except (OSError, ValueError):
        return Found(path, "gone", 0)
    try:
        st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
    except OSError:
        return Found(path, "gone", 0)
    finally:
        os.close(parent)
    if stat.S_ISREG(st.st_mode):
        return Found(path, "file", st.st_size)
    if stat.S_ISLNK(st.st_mode):
        return Found(path, "symlink", 0)
    if stat.S_ISDIR(st.st_mode):
        return Found(path, "directory", 0)
    return Found(path, "other", 0)


def _copy(root_fd: int, item: Found, target: str) -> None:
    if item.kind not in ("file", "symlink", "directory"):
        return
    parts = _components(item.path)
    destination = os.path.join(target, os.fsdecode(b"/".join(parts)))
    if item.kind == "directory":
        os.makedirs(destination, exist_ok=True)
        return
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    parent = _open_parent(root_fd, parts)
    try:
        if item.kind == "symlink":
            os.symlink(os.readlink(parts[-1], dir_fd=parent), destination)
            return
        try:
            source = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP):
                return  # replaced meanwhile: the report still names it
            raise
    finally:
        os.close(parent)
    with os.fdopen(source, "rb") as reading, open(destination, "xb") as writing:
        while chunk := reading.read(CHUNK):
            writing.write(chunk)
        writing.flush()
        os.fsync(writing.fileno())


def _report(target: str, why: str, found: list[Found]) -> None:
    with open(os.path.join(target, "REPORT.txt"), "w", encoding="utf-8") as report:
        report.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {why}\n")
        report.write(
            "This copy changed these paths since it last agreed with the primary; the "
            "primary's versions replace them. Here is what this copy held (compare and merge "
            "by hand):\n"
        )
        for item in found:
            shown = os.fsdecode(item.path)
            if item.kind == "gone":
                report.write(f"  {shown}: not in this copy (deleted or moved away here)\n")
            elif item.kind == "file":
                report.write(f"  {shown}: file, {item.size} bytes\n")
            else:
                report.write(f"  {shown}: {item.kind}\n")
        report.flush()
        os.fsync(report.fileno())


def _free_bytes(path: str) -> int:
    found = os.statvfs(path)
    return found.f_bavail * found.f_frsize
