"""Fail closed (issue 13, point 2): when the mount cannot stay, the directory's path answers
with an error — it never shows the bare copy underneath to a process that still writes. A
killed mount process leaves its mount dead; a busy unmount is fenced; the next start of the copy
takes either away."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tandem.fsdriver.fence import FENCE_TYPE
from tandem.fsdriver.mount import check_target, mounts_at, release_leftovers
from tests.conftest import start_mount
from tests.helpers.mountproc import wait_for

pytestmark = [pytest.mark.root, pytest.mark.both_drivers]


@pytest.fixture
def directory(workspace: Path) -> Iterator[Path]:
    path = workspace / "app"
    path.mkdir()
    (path / "before").write_text("written while mounted\n")
    try:
        yield path
    finally:
        while mounts_at(str(path)):
            subprocess.run(["umount", "-l", str(path)], check=False)


def _write_fails(path: Path) -> int:
    with pytest.raises(OSError) as caught:
        (path / "after").write_text("must not land in the bare copy\n")
    return caught.value.errno


def test_a_killed_mount_stays_dead_until_the_copy_starts_again(directory: Path) -> None:
    bare = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)  # the copy under the mount
    try:
        mounted = start_mount(directory, record=False)
        (directory / "inside").write_text("through the mount\n")
        process = mounted.process.process
        assert process is not None
        process.kill()  # SIGKILL: no cleanup of any kind
        process.wait(10)
        mounted.process.process = None
        assert _write_fails(directory) == errno.ENOTCONN
        with pytest.raises(OSError):
            os.listdir(directory)
        assert "after" not in os.listdir(f"/proc/self/fd/{bare}")
        # the next start takes the dead mount away and serves the copy again
        assert check_target(str(directory)) == str(directory)
        assert sorted(os.listdir(directory)) == ["before", "inside"]
        again = start_mount(directory, record=False)
        assert (directory / "inside").read_text() == "through the mount\n"
        again.stop()
    finally:
        os.close(bare)


def test_a_busy_unmount_is_fenced_not_left_open(directory: Path) -> None:
    bare = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    mounted = start_mount(directory, record=False)
    holder = subprocess.Popen(["sleep", "60"], cwd=directory)  # keeps the mount busy
    try:
        wait_for(lambda: os.path.exists(f"/proc/{holder.pid}/cwd"), 5, "the holder")
        process = mounted.process.process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        mounted.process.process = None
        assert "detached lazily and fenced" in mounted.process.log()
        assert mounts_at(str(directory))[-1] == FENCE_TYPE
        assert _write_fails(directory) == errno.ENOTCONN
        assert "after" not in os.listdir(f"/proc/self/fd/{bare}")
    finally:
        holder.kill()
        holder.wait()
        os.close(bare)
    assert release_leftovers(str(directory)) == ["fence"]
    assert sorted(os.listdir(directory)) == ["before"]


def _bind(source: Path, target: Path, read_only: bool = True) -> None:
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    if read_only:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)


def test_a_killed_secondary_s_read_only_bind_is_taken_away(directory: Path) -> None:
    """A secondary killed -9 leaves its read-only bind of the directory over itself: a
    restarted secondary would apply nothing (EROFS), a primary mounted over it refuse every
    write. The next start of the copy takes it away, and only it."""
    _bind(directory, directory)
    assert _write_fails(directory) == errno.EROFS
    assert release_leftovers(str(directory)) == ["read-only bind"]
    assert mounts_at(str(directory)) == []
    (directory / "after").write_text("writable again\n")


def test_a_read_only_mount_that_is_not_a_secondary_s_bind_stays(
    directory: Path, workspace: Path
) -> None:
    other = workspace / "other"
    other.mkdir()
    _bind(other, directory)  # another directory shown here: not what a secondary leaves
    assert release_leftovers(str(directory)) == []
    assert len(mounts_at(str(directory))) == 1
    subprocess.run(["umount", str(directory)], check=True)
    _bind(directory, directory, read_only=False)  # a writable self-bind: harmless, kept
    assert release_leftovers(str(directory)) == []
    assert len(mounts_at(str(directory))) == 1
