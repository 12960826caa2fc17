"""fallocate, SEEK_DATA/SEEK_HOLE and copy_file_range through the native driver behave as on the
plain ext4 directory beside it, and the stream the mount recorded, replayed onto a third copy,
gives the same file: holes, size and bytes.

The Python driver cannot serve these (pyfuse3 has no such requests: the kernel answers
fallocate with EOPNOTSUPP and emulates the rest), so these run on the native one. The kernel's
FUSE layer itself refuses COLLAPSE_RANGE and INSERT_RANGE (EOPNOTSUPP, before any FUSE server
hears of them): no passthrough can offer those two, and the test holds us to that answer."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tandem.engine.replica.replay import replay_recording
from tandem.fsdriver.driver import ENVIRONMENT_VARIABLE
from tandem.fsdriver.syscall import (
    FALLOC_FL_COLLAPSE_RANGE,
    FALLOC_FL_INSERT_RANGE,
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    fallocate,
)
from tests.conftest import Mounted

pytestmark = pytest.mark.root

BLOCK = 4096
SEEK_DATA, SEEK_HOLE = 3, 4

# (mode, offset, length) in blocks: each mode FUSE carries, and combinations that leave holes
STEPS = [
    (0, 0, 64),
    (FALLOC_FL_KEEP_SIZE, 64, 32),
    (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 8, 8),
    (FALLOC_FL_ZERO_RANGE, 20, 4),
    (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 90, 20),
    (0, 200, 16),
    (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 2),
]


@pytest.fixture
def native_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "native")


@pytest.fixture
def native_mount(native_driver: None, mounted: Mounted) -> Mounted:
    """`mounted`, on the native driver (asked for first, so the mount inherits it)."""
    return mounted


def _layout(path: Path) -> list[tuple[int, int]]:
    """The file's data extents as SEEK_DATA/SEEK_HOLE report them."""
    extents = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        position = 0
        while position < size:
            try:
                start = os.lseek(fd, position, SEEK_DATA)
            except OSError:
                break  # ENXIO: only a hole remains
            end = os.lseek(fd, start, SEEK_HOLE)
            extents.append((start, end))
            position = end
    finally:
        os.close(fd)
    return extents


def _shape(path: Path) -> tuple[int, bytes, list[tuple[int, int]], int]:
    st = path.stat()
    return st.st_size, path.read_bytes(), _layout(path), st.st_blocks


def _apply_steps(path: Path, payload: bytes) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, payload, 0)
        for mode, offset, length in STEPS:
            fallocate(fd, mode, offset * BLOCK, length * BLOCK)
            os.pwrite(fd, b"after %d" % mode, (offset + 1) * BLOCK + 17)
    finally:
        os.close(fd)


def test_every_fallocate_mode_matches_ext4_and_replays_to_the_same_file(
    workspace: Path, native_mount: Mounted
) -> None:
    plain = workspace / "plain"
    plain.mkdir()
    payload = os.urandom(48 * BLOCK)
    _apply_steps(plain / "f", payload)
    _apply_steps(native_mount.path / "f", payload)
    on_mount = _shape(native_mount.path / "f")
    assert on_mount[:3] == _shape(plain / "f")[:3]  # size, bytes and holes
    native_mount.stop()
    assert _shape(native_mount.path / "f") == on_mount  # the backing file, the mount gone

    copy = workspace / "copy"
    copy.mkdir()
    assert native_mount.record is not None
    lines = native_mount.record.read_text().splitlines()
    assert any('"kind":"Allocate"' in line for line in lines)
    replay_recording(lines, copy)
    assert _shape(copy / "f")[:3] == _shape(plain / "f")[:3]


def test_collapse_and_insert_range_are_refused_by_fuse_and_change_nothing(
    native_mount: Mounted,
) -> None:
    path = native_mount.path / "f"
    payload = os.urandom(16 * BLOCK)
    path.write_bytes(payload)
    fd = os.open(path, os.O_RDWR)
    try:
        for mode in (FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE):
            with pytest.raises(OSError) as refused:
                fallocate(fd, mode, 4 * BLOCK, 4 * BLOCK)
            assert refused.value.errno == errno.EOPNOTSUPP
    finally:
        os.close(fd)
    assert path.read_bytes() == payload


def test_seek_data_and_seek_hole_are_answered_exactly(native_mount: Mounted) -> None:
    path = native_mount.path / "sparse"
    with open(path, "wb") as out:
        out.seek(10 * BLOCK)
        out.write(b"x" * BLOCK)
        out.seek(30 * BLOCK)
        out.write(b"y")
    assert _layout(path) == [(10 * BLOCK, 11 * BLOCK), (30 * BLOCK, 30 * BLOCK + 1)]
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            os.lseek(fd, 31 * BLOCK, SEEK_DATA)  # past the last data: ENXIO, as on ext4
    finally:
        os.close(fd)


def test_copy_file_range_copies_and_the_copy_is_replicated(
    workspace: Path, native_mount: Mounted
) -> None:
    source, target = native_mount.path / "source", native_mount.path / "target"
    payload = os.urandom(3 * (1 << 20) + 123)
    source.write_bytes(payload)
    target.write_bytes(b"\0" * 100)
    fd_in, fd_out = os.open(source, os.O_RDONLY), os.open(target, os.O_WRONLY)
    try:
        copied = 0
        while copied < len(payload) - 50:
            done = os.copy_file_range(fd_in, fd_out, len(payload), 50 + copied, 7 + copied)
            assert done > 0
            copied += done
    finally:
        os.close(fd_in)
        os.close(fd_out)
    expected = b"\0" * 7 + payload[50:]
    assert target.read_bytes() == expected
    native_mount.stop()
    copy = workspace / "copy"
    copy.mkdir()
    assert native_mount.record is not None
    replay_recording(native_mount.record.read_text().splitlines(), copy)
    assert (copy / "target").read_bytes() == expected
