"""A fence over a replicated directory's path: a FUSE mount whose daemon side is closed the
moment it is made, so every access through the path fails (ENOTCONN, "Transport endpoint is not
connected") instead of reaching the bare copy underneath, unreplicated and unjournalled.

It goes up where the Tandem mount could not stay: a step down whose unmount was busy (detached
lazily, the path would show the bare copy to the next open). A Tandem mount whose process died
is already such a fence (its connection is dead) and is left in place. Either is removed only
when the module starts its copy again (`release_leftovers`).
"""

from __future__ import annotations

import errno
import logging
import os

from tandem.fsdriver.syscall import MNT_DETACH, MS_NODEV, MS_NOSUID, mount, umount2

log = logging.getLogger(__name__)

FENCE_TYPE = "fuse.tandem-fence"


def fence(path: str) -> None:
    """Put a dead mount over ``path``: from now on it answers every access with ENOTCONN."""
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        mount(
            "tandem-fence",
            path,
            FENCE_TYPE,
            MS_NOSUID | MS_NODEV,
            f"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other",
        )
    finally:
        os.close(fd)  # no daemon: the connection is dead from the start
    log.warning("%s fenced: every access fails until the module starts its copy again", path)


def is_dead(path: str) -> bool:
    """Whether the mount at ``path`` is a dead FUSE connection (a fence, or a Tandem mount
    whose process is gone)."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def remove(path: str) -> None:
    umount2(path, MNT_DETACH)
