"""Keeping a copy's own changes aside before a primary's versions replace them.

Two ways, both keeping only paths, never the whole copy, each only if the disk has room for it
plus a margin (else nothing more is overwritten: `AsideShort`, worded for the operator), each
into ``<aside>/<stamp>-<label>/`` with a REPORT.txt saying why and what was there:
- `keep_aside`: a copy whose journal names the paths it changed since it last agreed with the
  primary (it served alone) keeps those before the resync starts;
- `AsideKeeper`: a copy that holds data the primary has not served and whose changes nothing
  names (a split brain's yielding side, a copy with no history the operator did not choose)
  keeps each path just before the resync first changes it — which are exactly the paths that
  differ. The node asks for it with a marker file (`request_keeping`); a resync broken off
  resumes into the same directory, and the marker goes once the copies are in sync.

Paths are walked one component at a time without following symlinks (a symlink is kept as a
symlink), so nothing outside the copy is read.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from dataclasses import dataclass

from tandem.engine.protocol.items import StreamItem
from tandem.engine.protocol.repairs import Ensure, RemoveTree
from tandem.engine.replica.repair import named_paths
from tandem.fsdriver.mutation import RemoveDirectory, Stamp, Sync

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


JOURNAL_HEADING = (
    "This copy changed these paths since it last agreed with the primary; the primary's "
    "versions replace them. Here is what this copy held (compare and merge by hand):\n"
)


def _report(target: str, why: str, found: list[Found], heading: str = JOURNAL_HEADING) -> None:
    with open(os.path.join(target, "REPORT.txt"), "w", encoding="utf-8") as report:
        report.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {why}\n")
        report.write(heading)
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


# -- keeping what a resync changes -------------------------------------------------------------

KEPT_LIST = "KEPT"  # in the target: one line per path kept (a resumed resync reads it)


def request_keeping(marker: str, why: str) -> None:
    """Ask the receiver of this copy to keep aside every path its next resync changes."""
    with open(marker + ".tmp", "w", encoding="utf-8") as out:
        json.dump({"why": why, "asked_at": time.strftime("%Y-%m-%d %H:%M:%S")}, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(marker + ".tmp", marker)


class AsideKeeper:
    def __init__(self, root_fd: int, marker: str, target: str, why: str) -> None:
        self._root_fd = root_fd
        self._marker = marker
        self.target = target
        self.why = why
        self._kept: dict[bytes, Found] = {}
        listed = os.path.join(target, KEPT_LIST)
        if os.path.exists(listed):
            with open(listed, "rb") as kept:
                for line in kept.read().splitlines():
                    kind, size, path = line.split(b" ", 2)
                    self._kept[bytes.fromhex(path.decode())] = Found(
                        bytes.fromhex(path.decode()), kind.decode(), int(size)
                    )

    @classmethod
    def resume(cls, marker: str, root_fd: int, aside_root: str, label: str) -> AsideKeeper | None:
        """The keeper the node asked for (None: it did not); raises AsideShort."""
        try:
            with open(marker, encoding="utf-8") as asked:
                request = json.load(asked)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise AsideShort(
                f"the request to keep this copy aside ({marker}) is unreadable: {exc}"
            ) from None
        why = str(request.get("why", "this copy held data the primary has not served"))
        target = request.get("target")
        try:
            if not isinstance(target, str) or not os.path.isdir(target):
                os.makedirs(aside_root, mode=0o700, exist_ok=True)
                target = os.path.join(aside_root, f"{time.strftime('%Y%m%d-%H%M%S')}-{label}")
                os.makedirs(target, mode=0o700, exist_ok=True)
                with open(marker + ".tmp", "w", encoding="utf-8") as out:
                    json.dump({**request, "target": target}, out)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(marker + ".tmp", marker)
        except OSError as exc:
            raise AsideShort(f"cannot keep this copy's changes in {aside_root}: {exc}") from None
        return cls(root_fd, marker, target, why)

    def before(self, item: StreamItem) -> None:
        """Keep what ``item`` is about to change (once per path)."""
        if isinstance(item, Sync | Stamp):
            return  # changes no content
        for path in named_paths(item):  # type: ignore[arg-type]
            if path not in self._kept:
                self._keep(path, _replaces_tree(item))

    def _keep(self, path: bytes, whole_tree: bool) -> None:
        found = _look(self._root_fd, path)
        if found.kind == "directory" and not whole_tree:
            return  # its entries are kept as they change; a mode or time loses no data
        try:
            if found.kind == "directory" and whole_tree:
                for entry in _entries(self._root_fd, path):
                    if entry not in self._kept:
                        self._keep(entry, True)
            if found.kind == "file":
                free = _free_bytes(self.target)
                if found.size + ASIDE_MARGIN > free:
                    raise AsideShort(
                        f"cannot keep {os.fsdecode(path)} aside before the primary's version "
                        f"replaces it: it needs {found.size >> 20} MiB and {self.target} has "
                        f"{free >> 20} MiB free; nothing more is replaced until there is room"
                    )
            _copy(self._root_fd, found, self.target)
        except FileExistsError:
            pass  # kept by a session that ended before it could list it
        except OSError as exc:
            raise AsideShort(
                f"keeping {os.fsdecode(path)} in {self.target} failed: {exc}"
            ) from None
        self._kept[path] = found
        with open(os.path.join(self.target, KEPT_LIST), "ab") as kept:
            kept.write(f"{found.kind} {found.size} {path.hex()}\n".encode())

    def finish(self) -> str:
        """The copies are in sync: the report, and the node's request is done."""
        found = [item for item in self._kept.values() if item.kind != "gone"]
        _report(self.target, self.why, found, RESYNC_HEADING)
        os.unlink(os.path.join(self.target, KEPT_LIST))
        try:
            os.unlink(self._marker)
        except FileNotFoundError:
            pass
        return self.target


RESYNC_HEADING = (
    "This copy held data the primary had not served; the resync replaced these paths with the "
    "primary's versions (the others were the same). Here is what this copy held (compare and "
    "merge by hand):\n"
)


def _replaces_tree(item: StreamItem) -> bool:
    """The item takes away whatever is under its path (not only the object itself)."""
    if isinstance(item, RemoveTree | RemoveDirectory):
        return True
    return isinstance(item, Ensure) and not stat.S_ISDIR(item.mode)


def _entries(root_fd: int, path: bytes) -> list[bytes]:
    parts = _components(path)
    fd = os.dup(root_fd)
    try:
        for part in parts:
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            following = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = following
        names = os.listdir(fd)
    except OSError:
        return []
    finally:
        os.close(fd)
    prefix = b"/".join(parts)
    return [(prefix + b"/" if prefix else b"") + os.fsencode(name) for name in names]
