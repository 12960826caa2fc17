"""Paths longer than PATH_MAX from the copy's root, reached legally from deep inside the tree
(every call names at most a few components relative to a directory descriptor): the mount
answers as ext4 does, never ENAMETOOLONG, and the recorded stream replays onto a copy with
the same long paths (the receiver walks them in pieces, still through no symlink)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tandem.engine.replica.replay import replay_recording
from tests.conftest import Mounted

pytestmark = [pytest.mark.root, pytest.mark.both_drivers]

LEVEL = b"d" * 240
DEPTH = 22  # about 5,300 bytes from the root: past PATH_MAX (4,096)


def _descend(root: Path) -> list[int]:
    """Make the chain of directories and return a descriptor of each level (root first)."""
    fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY)]
    for _ in range(DEPTH):
        try:
            os.mkdir(LEVEL, dir_fd=fds[-1])
        except FileExistsError:
            pass
        fds.append(os.open(LEVEL, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
    return fds


def _attempt(call: Any) -> Any:
    try:
        result = call()
    except OSError as exc:
        return ["err", exc.errno]
    return ["ok", result]


def _script(deep: int) -> list[Any]:
    """Operations at the bottom of the chain; each answer (or errno) goes in the transcript."""
    here = f"/proc/self/fd/{deep}"

    def write_file() -> int:
        fd = os.open(b"file", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640, dir_fd=deep)
        try:
            return os.write(fd, b"deep data " * 1000)
        finally:
            os.close(fd)

    def attributes(name: bytes) -> list[int]:
        st = os.stat(name, dir_fd=deep, follow_symlinks=False)
        return [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size, st.st_nlink]

    steps = [
        write_file,
        lambda: attributes(b"file"),
        lambda: os.symlink(b"file", b"link", dir_fd=deep),
        lambda: os.readlink(b"link", dir_fd=deep),
        lambda: os.link(b"file", b"hard", src_dir_fd=deep, dst_dir_fd=deep),
        lambda: attributes(b"hard"),
        lambda: os.rename(b"hard", b"renamed", src_dir_fd=deep, dst_dir_fd=deep),
        lambda: os.chmod(b"renamed", 0o600, dir_fd=deep),
        lambda: os.utime(b"renamed", ns=(10**18, 10**18), dir_fd=deep),
        lambda: os.setxattr(f"{here}/file", b"user.k", b"v"),
        lambda: os.getxattr(f"{here}/file", b"user.k"),
        lambda: os.mkdir(b"sub", 0o750, dir_fd=deep),
        lambda: os.mkfifo(b"fifo", 0o600, dir_fd=deep),
        lambda: sorted(os.listdir(deep)),
        lambda: os.rmdir(b"sub", dir_fd=deep),
        lambda: os.unlink(b"link", dir_fd=deep),
        lambda: sorted(os.listdir(deep)),
        lambda: attributes(b"file"),
    ]
    return [_attempt(step) for step in steps]


def _run(root: Path) -> list[Any]:
    fds = _descend(root)
    try:
        return _script(fds[-1])
    finally:
        for fd in fds:
            os.close(fd)


def _digest(root: Path) -> dict[str, Any]:
    """Names, types, modes, sizes and contents below ``root``, walked by descriptors."""
    found: dict[str, Any] = {}
    for directory, dirs, files, dir_fd in os.fwalk(root, follow_symlinks=False):
        for name in dirs + files:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            relative = directory[len(str(root)) :]
            key = f"{len(relative)}:{relative[-30:]}/{name}"
            content = b""
            if stat.S_ISREG(st.st_mode):
                fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
                with os.fdopen(fd, "rb") as source:
                    content = hashlib.sha256(source.read()).digest()
            found[key] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size, content)
    return found


def test_paths_longer_than_path_max_behave_as_on_ext4_and_replay(
    workspace: Path, mounted: Mounted
) -> None:
    plain = workspace / "plain"
    plain.mkdir()
    expected = _run(plain)
    assert expected[0] == ["ok", 10_000]
    assert all(answer[0] == "ok" for answer in expected), expected
    assert _run(mounted.path) == expected

    mounted.stop()
    copy = workspace / "copy"
    copy.mkdir()
    assert mounted.record is not None
    replay_recording(mounted.record.read_text().splitlines(), copy)
    assert _digest(copy) == _digest(plain)
    assert _digest(mounted.path) == _digest(plain)
