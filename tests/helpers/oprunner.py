"""Runs a script of file operations in a directory, as a given user, and reports every outcome.

Used as a child process (``python oprunner.py`` with a JSON request on stdin) so the same script
can run against a plain directory and against a mount, as root or as an unprivileged user, and
the two transcripts can be compared entry by entry: return values, errno names, contents.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import stat
import subprocess
import sys
import time
from typing import Any

# Everything is imported up front: once the runner drops to an unprivileged user it may no
# longer be able to read the interpreter's library directory.

OLD_NS = 1_000_000_000  # 2001-09-09: a time no operation can produce by itself

# random sequences create fifos and then open them: never block on one
NONBLOCK = os.O_NONBLOCK

RENAME_FLAGS = {"replace": 0, "noreplace": 1, "exchange": 2}


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


LIBC = ctypes.CDLL(None, use_errno=True)
UTIME_OMIT = (1 << 30) - 2
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100


def _renameat2(old: str, new: str, flags: int) -> None:
    if flags == 0:
        os.rename(old, new)
        return
    if LIBC.renameat2(-100, os.fsencode(old), -100, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def normal_stat(st: os.stat_result) -> dict[str, Any]:
    return {
        "type": stat.S_IFMT(st.st_mode),
        "perm": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "nlink": st.st_nlink,
        "size": st.st_size if not stat.S_ISDIR(st.st_mode) else None,
        "rdev": st.st_rdev,
    }


def _write_all(fd: int, data: bytes, offset: int | None = None) -> int:
    if offset is None:
        return os.write(fd, data)
    return os.pwrite(fd, data, offset)


def run_op(op: list[Any]) -> Any:
    name, *args = op
    match name:
        case "write":
            path, offset, text, flags = args
            extra = 0
            for flag in flags:
                extra |= getattr(os, flag)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | NONBLOCK | extra, 0o644)
            try:
                return _write_all(fd, text.encode(), None if extra & os.O_APPEND else offset)
            finally:
                os.close(fd)
        case "create_excl":
            path, mode = args
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
            return None
        case "open_trunc":
            os.close(os.open(args[0], os.O_WRONLY | os.O_TRUNC | NONBLOCK))
            return None
        case "read":
            fd = os.open(args[0], os.O_RDONLY | NONBLOCK)
            with open(fd, "rb") as handle:
                return handle.read().decode("latin-1")
        case "truncate":
            os.truncate(args[0], args[1])
            return None
        case "mkdir":
            os.mkdir(args[0], args[1])
            return None
        case "rmdir":
            os.rmdir(args[0])
            return None
        case "unlink":
            os.unlink(args[0])
            return None
        case "rename":
            _renameat2(args[0], args[1], RENAME_FLAGS[args[2]])
            return None
        case "link":
            os.link(args[0], args[1], follow_symlinks=False)
            return None
        case "symlink":
            os.symlink(args[0], args[1])
            return None
        case "readlink":
            return os.readlink(args[0])
        case "chmod":
            os.chmod(args[0], args[1])
            return None
        case "chown":
            os.chown(args[0], args[1], args[2], follow_symlinks=False)
            return None
        case "utime":
            os.utime(args[0], ns=(args[1], args[2]), follow_symlinks=False)
            return None
        case "age":
            os.utime(args[0], ns=(OLD_NS, OLD_NS), follow_symlinks=False)
            return None
        case "mtime_is_old":
            return os.lstat(args[0]).st_mtime_ns == OLD_NS
        case "setxattr":
            path, key, value, flags = args
            os.setxattr(path, key, value.encode(), flags, follow_symlinks=False)
            return None
        case "getxattr":
            return os.getxattr(args[0], args[1], follow_symlinks=False).decode("latin-1")
        case "listxattr":
            return sorted(os.listxattr(args[0], follow_symlinks=False))
        case "removexattr":
            os.removexattr(args[0], args[1], follow_symlinks=False)
            return None
        case "stat":
            return normal_stat(os.lstat(args[0]))
        case "listdir":
            return sorted(os.listdir(args[0]))
        case "listdir_all":
            # the C library's view, with "." and ".." (ls -a)
            listing = subprocess.run(
                ["ls", "-a1f", args[0]], capture_output=True, text=True, check=True
            )
            return sorted(listing.stdout.split())
        case "mknod":
            path, kind, mode = args
            kinds = {
                "fifo": stat.S_IFIFO,
                "sock": stat.S_IFSOCK,
                "chr": stat.S_IFCHR,
                "blk": stat.S_IFBLK,
            }
            os.mknod(path, kinds[kind] | mode, os.makedev(1, 3) if kind in ("chr", "blk") else 0)
            return None
        case "fsync":
            fd = os.open(args[0], os.O_RDONLY)
            try:
                os.fsync(fd)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            return None
        case "access":
            return os.access(args[0], args[1])
        case "open_unlink_write":
            path, text = args
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.unlink(path)
                os.write(fd, text.encode())
                os.fchmod(fd, 0o600)
                st = os.fstat(fd)
                return [os.pread(fd, 100, 0).decode(), st.st_nlink, stat.S_IMODE(st.st_mode)]
            finally:
                os.close(fd)
        case "ctime_changes":
            # POSIX: these calls mark the inode's status as changed; a stale attribute cache
            # would hide it
            path, *inner = args
            before = os.lstat(path).st_ctime_ns
            time.sleep(0.02)  # more than the kernel's timestamp granularity
            run_op(inner)
            return os.lstat(inner[2] if inner[0] == "rename" else path).st_ctime_ns != before
        case "utime_now":
            os.utime(args[0], follow_symlinks=False)
            return None
        case "utime_omit_atime":
            # utimensat(2) with UTIME_OMIT for atime: only mtime changes
            before = os.lstat(args[0])
            times = (Timespec * 2)(Timespec(0, UTIME_OMIT), Timespec(args[1], 0))
            if LIBC.utimensat(AT_FDCWD, os.fsencode(args[0]), times, AT_SYMLINK_NOFOLLOW) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            after = os.lstat(args[0])
            return [after.st_atime_ns == before.st_atime_ns, after.st_mtime_ns == args[1] * 10**9]
        case "direct_write":
            # O_DIRECT needs aligned memory: an anonymous mapping is page-aligned
            buffer = mmap.mmap(-1, 4096)
            buffer.write(args[1].encode().ljust(4096, b"."))
            fd = os.open(args[0], os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
            try:
                return os.write(fd, buffer)
            finally:
                os.close(fd)
                buffer.close()
        case "statvfs":
            vfs = os.statvfs(args[0])
            return [vfs.f_bsize, vfs.f_frsize, vfs.f_namemax, vfs.f_blocks, vfs.f_files]
        case "readdir_while_changing":
            # POSIX: an entry neither added nor removed during the listing appears exactly once
            directory, count = args
            os.mkdir(directory)
            for i in range(count):
                os.close(
                    os.open(os.path.join(directory, f"e{i:05}"), os.O_CREAT | os.O_WRONLY, 0o644)
                )
            seen: list[str] = []
            removed: set[str] = set()
            with os.scandir(directory) as entries:
                for n, entry in enumerate(entries):
                    seen.append(entry.name)
                    if n == count // 3:
                        for i in range(0, count, 7):
                            name = f"e{i:05}"
                            os.unlink(os.path.join(directory, name))
                            removed.add(name)
                        for i in range(50):
                            os.close(
                                os.open(
                                    os.path.join(directory, f"new{i}"),
                                    os.O_CREAT | os.O_WRONLY,
                                    0o644,
                                )
                            )
            stable = {f"e{i:05}" for i in range(count)} - removed
            duplicates = len(seen) - len(set(seen))
            missing = sorted(stable - set(seen))
            return [duplicates, missing]
        case "rmdir_while_inside":
            # a removed directory still in use as a working directory
            here = os.getcwd()
            os.chdir(args[0])
            try:
                os.rmdir(os.path.join(here, args[0]))
                st = os.stat(".")
                os.chmod(".", 0o700)
                return [st.st_nlink, stat.S_IMODE(os.stat(".").st_mode), os.listdir(".")]
            finally:
                os.chdir(here)
        case "rename_while_open":
            path, new, text = args
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.rename(path, new)
                os.write(fd, text.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            with open(new, "rb") as handle:
                return handle.read().decode()
        case "mmap_write":
            path, offset, text = args
            data = text.encode()
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size < offset + len(data):
                    os.ftruncate(fd, offset + len(data))
                with mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as mapped:
                    mapped[offset : offset + len(data)] = data
                    mapped.flush()
            finally:
                os.close(fd)
            return None
        case "sparse":
            path, offset, text = args
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | NONBLOCK, 0o644)
            try:
                os.pwrite(fd, text.encode(), offset)
                os.fsync(fd)
                st = os.fstat(fd)
                return [st.st_size, st.st_blocks * 512 < st.st_size]
            finally:
                os.close(fd)
        case _:
            raise ValueError(f"unknown op {name!r}")


def run(ops: list[list[Any]]) -> list[Any]:
    transcript = []
    for op in ops:
        try:
            transcript.append(["ok", run_op(op)])
        except OSError as exc:
            transcript.append(["err", errno.errorcode.get(exc.errno or 0, str(exc.errno))])
    return transcript


def main() -> None:
    request = json.load(sys.stdin)
    os.umask(request.get("umask", 0o022))
    uid, gid = request.get("uid", 0), request.get("gid", 0)
    if uid != 0 or gid != 0:
        os.setgroups(request.get("groups", []))
        os.setgid(gid)
        os.setuid(uid)
    os.chdir(request["root"])
    json.dump(run(request["ops"]), sys.stdout)


if __name__ == "__main__":
    main()
