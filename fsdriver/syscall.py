"""The few Linux calls the standard library does not expose (renameat2, mount, umount2)."""

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
_libc.syncfs.argtypes = [ctypes.c_int]
_libc.syncfs.restype = ctypes.c_int


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


def syncfs(fd: int) -> None:
    """Flush the whole filesystem holding ``fd`` (data and metadata)."""
    _check(_libc.syncfs(fd))
