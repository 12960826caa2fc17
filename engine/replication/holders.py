"""The processes still using a mount, found and stopped before it is taken down (as a forced
stop does): a process left holding a file or its working directory there would make the
unmount busy, and a lazily detached mount leaves the path to the bare copy.

A process is a holder when one of its descriptors, its working directory or its root is on the
mount, told by the mount's id (``mnt_id`` in /proc/PID/fdinfo): exact across mount and PID
namespaces, and without a single call into the filesystem (a stat there could hang on it).
"""

from __future__ import annotations

import logging
import os
import signal
import time

from tandem.fsdriver.mount import unescape_mountinfo

log = logging.getLogger(__name__)

TERM_GRACE = 3.0  # seconds between SIGTERM and SIGKILL


def mount_id(path: str) -> int | None:
    """The id of the mount whose mount point is ``path`` (the innermost), None if none."""
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            fields = line.split()
            if unescape_mountinfo(fields[4]) == path:
                found = int(fields[0])
    return found


def _fd_mount_id(fdinfo: str) -> int | None:
    try:
        with open(fdinfo, encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _place_mount_id(link: str) -> int | None:
    """The mount of a process's cwd or root: an O_PATH descriptor on it (no lookup through the
    filesystem) tells its mount in our own fdinfo."""
    try:
        fd = os.open(link, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _fd_mount_id(f"/proc/self/fdinfo/{fd}")
    finally:
        os.close(fd)


def holders(mount: int, spare: frozenset[int] = frozenset()) -> list[int]:
    """PIDs of processes using mount ``mount`` (never ourselves or ``spare``)."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in spare or int(entry) == me:
            continue
        pid = int(entry)
        if (
            _place_mount_id(f"/proc/{pid}/cwd") == mount
            or _place_mount_id(f"/proc/{pid}/root") == mount
        ):
            found.append(pid)
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fdinfo")
        except OSError:
            continue
        if any(_fd_mount_id(f"/proc/{pid}/fdinfo/{fd}") == mount for fd in fds):
            found.append(pid)
    return found


def stop_holders(path: str, spare: frozenset[int] = frozenset()) -> list[int]:
    """SIGTERM, then SIGKILL after a grace period, every process still using the mount at
    ``path``; returns the PIDs that had to be stopped."""
    mount = mount_id(os.path.realpath(path))
    if mount is None:
        return []
    found = holders(mount, spare)
    if not found:
        return []
    log.warning("%s: stopping %d process(es) still using it: %s", path, len(found), found)
    _signal(found, signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE
    while time.monotonic() < deadline and holders(mount, spare):
        time.sleep(0.05)
    left = holders(mount, spare)
    if left:
        log.warning("%s: killing %s (still there after SIGTERM)", path, left)
        _signal(left, signal.SIGKILL)
    return found


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
