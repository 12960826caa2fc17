"""The primary's own backing operations resolve beneath the copy through no symlink (issue 14,
the second line of defence): should the backing tree be changed behind the mount — a directory
the kernel knows replaced by a symlink to somewhere else — an open through the mount fails
instead of reaching the file outside."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Mounted, start_mount

pytestmark = [pytest.mark.root, pytest.mark.both_drivers]


@pytest.fixture
def behind(workspace: Path) -> Iterator[tuple[Mounted, Path, Path]]:
    """A mount, the backing tree under it (a bind made before it), and a directory outside."""
    directory, under, outside = workspace / "mnt", workspace / "under", workspace / "outside"
    for path in (directory, under, outside):
        path.mkdir()
    subprocess.run(["mount", "--bind", str(directory), str(under)], check=True)
    try:
        # long entry and attribute timeouts: the kernel keeps using what it looked up
        mount = start_mount(directory, extra=["--entry-timeout", "60", "--attr-timeout", "60"])
        try:
            yield mount, under, outside
        finally:
            mount.process.stop()
    finally:
        subprocess.run(["umount", str(under)], check=False)


def test_a_directory_swapped_for_a_symlink_behind_the_mount_leads_nowhere(
    behind: tuple[Mounted, Path, Path],
) -> None:
    mount, under, outside = behind
    (mount.path / "d").mkdir()
    (mount.path / "d" / "f").write_bytes(b"inside")
    (outside / "f").write_bytes(b"OUTSIDE")
    os.stat(mount.path / "d" / "f")  # looked up: the mount knows d/f
    (under / "d").rename(under / "d-moved")
    (under / "d").symlink_to(outside)
    with pytest.raises(OSError) as refused:
        fd = os.open(mount.path / "d" / "f", os.O_WRONLY)
        try:
            os.write(fd, b"written through a symlink")
        finally:
            os.close(fd)
    assert refused.value.errno in (errno.ELOOP, errno.ENOENT, errno.ESTALE)
    assert (outside / "f").read_bytes() == b"OUTSIDE"
    assert (under / "d-moved" / "f").read_bytes() == b"inside"
