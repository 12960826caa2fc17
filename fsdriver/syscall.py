"""The few Linux calls the standard library does not expose (renameat2, openat2, mount, umount2)."""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
MNT_DETACH = 2

_libc.renameat2.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
]
_libc.renameat2.restype = ctypes.c_int
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.umount2.restype = ctypes.c_int
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.mount.restype = ctypes.c_int
MS_NOSUID = 2
MS_NODEV = 4
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int
_libc.syncfs.argtypes = [ctypes.c_int]
_libc.syncfs.restype = ctypes.c_int


# openat2(2): one number on every architecture (it came after the tables were unified)
_SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


_libc.syscall.restype = ctypes.c_long


def _check(result: int, *names: bytes) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), *(n.decode(errors="replace") for n in names[:1]))


def renameat2(old_dir_fd: int, old: bytes, new_dir_fd: int, new: bytes, flags: int) -> None:
    _check(_libc.renameat2(old_dir_fd, old, new_dir_fd, new, flags), old)


def umount2(target: str, flags: int = 0) -> None:
    encoded = os.fsencode(target)
    _check(_libc.umount2(encoded, flags), encoded)


def mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    encoded = os.fsencode(target)
    _check(_libc.mount(source.encode(), encoded, fstype.encode(), flags, data.encode()), encoded)


# fallocate(2) modes (linux/falloc.h)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_COLLAPSE_RANGE = 0x08
FALLOC_FL_ZERO_RANGE = 0x10
FALLOC_FL_INSERT_RANGE = 0x20


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with any mode (os.posix_fallocate knows only mode 0)."""
    _check(_libc.fallocate(fd, mode, offset, length))


def syncfs(fd: int) -> None:
    """Flush the whole filesystem holding ``fd`` (data and metadata)."""
    _check(_libc.syncfs(fd))


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries durable (a file created or renamed in it survives a crash)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def openat2(dir_fd: int, path: bytes, flags: int, mode: int, resolve: int) -> int:
    """A descriptor for ``path`` resolved from ``dir_fd`` under the ``RESOLVE_*`` rules."""
    how = _OpenHow(flags, mode, resolve)
    fd = _libc.syscall(
        _SYS_OPENAT2,
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(path),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path.decode(errors="replace"))
    return int(fd)
