"""A comparable picture of a directory tree: what two copies of a replicated directory must
agree on (types, modes, owners, contents, xattrs, hard links, optionally mtimes)."""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Any


def snapshot(root: str, *, times: bool = False, owners: bool = True) -> dict[str, Any]:
    """Every object under ``root`` (not following symlinks), with hard links as groups."""
    objects: dict[str, dict[str, Any]] = {}
    by_inode: dict[tuple[int, int], list[str]] = {}
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        pending = ["."]
        while pending:
            rel = pending.pop()
            st = os.stat(rel, dir_fd=root_fd, follow_symlinks=False)
            entry: dict[str, Any] = {
                "type": stat.S_IFMT(st.st_mode),
                "perm": stat.S_IMODE(st.st_mode),
                "nlink": st.st_nlink,
            }
            if owners:
                entry["owner"] = (st.st_uid, st.st_gid)
            if times:
                entry["mtime_ns"] = st.st_mtime_ns
            full = os.path.join(f"/proc/self/fd/{root_fd}", rel)
            if not stat.S_ISLNK(st.st_mode):
                entry["xattrs"] = {
                    n: os.getxattr(full, n, follow_symlinks=False)
                    for n in sorted(os.listxattr(full, follow_symlinks=False))
                }
            if stat.S_ISREG(st.st_mode):
                entry["size"] = st.st_size
                with open(os.open(rel, os.O_RDONLY, dir_fd=root_fd), "rb") as handle:
                    entry["sha256"] = hashlib.sha256(handle.read()).hexdigest()
                by_inode.setdefault((st.st_dev, st.st_ino), []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(rel, dir_fd=root_fd)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                entry["rdev"] = st.st_rdev
            elif stat.S_ISDIR(st.st_mode):
                for name in os.listdir(os.path.join(f"/proc/self/fd/{root_fd}", rel)):
                    pending.append(os.path.normpath(os.path.join(rel, name)))
            objects[rel] = entry
    finally:
        os.close(root_fd)
    links = sorted(sorted(paths) for paths in by_inode.values() if len(paths) > 1)
    return {"objects": objects, "hard_links": links}


def diff(left: dict[str, Any], right: dict[str, Any]) -> list[str]:
    """Human-readable differences, empty when the trees agree."""
    out = []
    lo, ro = left["objects"], right["objects"]
    for path in sorted(set(lo) | set(ro)):
        if path not in lo:
            out.append(f"only on the right: {path} {ro[path]}")
        elif path not in ro:
            out.append(f"only on the left: {path} {lo[path]}")
        elif lo[path] != ro[path]:
            keys = sorted(
                k for k in set(lo[path]) | set(ro[path]) if lo[path].get(k) != ro[path].get(k)
            )
            out.append(
                f"{path}: "
                + ", ".join(f"{k} {lo[path].get(k)!r} != {ro[path].get(k)!r}" for k in keys)
            )
    if left["hard_links"] != right["hard_links"]:
        out.append(f"hard links {left['hard_links']} != {right['hard_links']}")
    return out
