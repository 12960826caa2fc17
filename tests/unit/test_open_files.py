"""The descriptors a receiver keeps between writes: a kept descriptor never writes to an object
its path no longer names, never leads through a symlink, and the copy ends exactly as the
applies by path leave it, whatever the stream does to the names in between."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tandem.engine.replica.open_files import OpenFiles
from tandem.engine.replica.replay import apply
from tandem.fsdriver.mutation import (
    CreateFile,
    MakeDirectory,
    MakeSymlink,
    Mutation,
    RemoveDirectory,
    Rename,
    SetAttributes,
    Stamp,
    Unlink,
    Write,
)


@pytest.fixture
def copy(tmp_path: Path) -> tuple[Path, int]:
    root = tmp_path / "copy"
    root.mkdir()
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    yield root, root_fd
    os.close(root_fd)


def test_a_write_after_the_name_moved_reaches_the_new_file(copy: tuple[Path, int]) -> None:
    root, root_fd = copy
    files = OpenFiles(root_fd)
    apply(root_fd, MakeDirectory(b"d", 0o755, 0, 0), files)
    apply(root_fd, CreateFile(b"d/f", 0o644, 0, 0), files)
    apply(root_fd, Write(b"d/f", 0, b"first"), files)
    assert len(files) == 1
    apply(root_fd, Rename(b"d/f", b"d/g"), files)
    assert len(files) == 0  # forgotten: the path may name another object now
    apply(root_fd, CreateFile(b"d/f", 0o644, 0, 0), files)
    apply(root_fd, Write(b"d/f", 0, b"second"), files)
    assert (root / "d/g").read_bytes() == b"first"
    assert (root / "d/f").read_bytes() == b"second"


def test_a_symlink_put_where_a_kept_file_was_is_not_followed(
    copy: tuple[Path, int], tmp_path: Path
) -> None:
    root, root_fd = copy
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_bytes(b"outside")
    files = OpenFiles(root_fd)
    apply(root_fd, MakeDirectory(b"d", 0o755, 0, 0), files)
    apply(root_fd, CreateFile(b"d/f", 0o644, 0, 0), files)
    apply(root_fd, Write(b"d/f", 0, b"inside"), files)
    apply(root_fd, Rename(b"d", b"e"), files)  # the kept file's directory moves away
    apply(root_fd, MakeSymlink(b"d", str(outside).encode(), 0, 0), files)
    with pytest.raises(OSError) as refused:
        apply(root_fd, Write(b"d/f", 0, b"INJECTED"), files)
    assert refused.value.errno == errno.ELOOP
    apply(root_fd, Unlink(b"d"), files)
    apply(root_fd, CreateFile(b"d", 0o644, 0, 0), files)
    apply(root_fd, Unlink(b"d"), files)
    apply(root_fd, MakeSymlink(b"d", str(outside / "f").encode(), 0, 0), files)
    with pytest.raises(OSError) as refused:
        apply(root_fd, Write(b"d", 0, b"INJECTED"), files)
    assert refused.value.errno == errno.ELOOP
    assert (outside / "f").read_bytes() == b"outside"
    assert (root / "e/f").read_bytes() == b"inside"


def test_no_more_than_the_bound_stay_open(copy: tuple[Path, int]) -> None:
    _root, root_fd = copy
    files = OpenFiles(root_fd, held=4)
    before = len(os.listdir("/proc/self/fd"))
    for n in range(20):
        name = b"f%d" % n
        apply(root_fd, CreateFile(name, 0o644, 0, 0), files)
        apply(root_fd, Write(name, 0, name), files)
        assert len(files) <= 4
    assert len(os.listdir("/proc/self/fd")) == before + 4
    apply(root_fd, Write(b"f0", 0, b"again"), files)  # evicted long ago: opened anew
    files.forget()
    assert len(os.listdir("/proc/self/fd")) == before


def test_times_and_sizes_go_through_the_kept_descriptor(copy: tuple[Path, int]) -> None:
    root, root_fd = copy
    files = OpenFiles(root_fd)
    apply(root_fd, CreateFile(b"f", 0o644, 0, 0), files)
    stamp = Stamp(b"f", 1_000_000_123, 2_000_000_456)
    apply(root_fd, Write(b"f", 0, b"0123456789", stamps=(stamp,)), files)
    apply(root_fd, SetAttributes(b"f", size=4, stamps=(stamp,)), files)
    status = os.stat(root / "f")
    assert (root / "f").read_bytes() == b"0123"
    assert (status.st_atime_ns, status.st_mtime_ns) == (1_000_000_123, 2_000_000_456)


NAMES = (b"a", b"b", b"d/a", b"d/b", b"e/a")
STAMPED = 10**18  # stamps set modification times up to this; the clock is beyond it


def _mutation() -> st.SearchStrategy[Mutation]:
    name = st.sampled_from(NAMES)
    directory = st.sampled_from((b"d", b"e"))
    stamp = st.builds(Stamp, name, st.just(5_000_000_000), st.integers(1, STAMPED))
    return st.one_of(
        st.builds(
            CreateFile,
            name,
            st.sampled_from((0o644, 0o4755, 0o600)),
            st.sampled_from((0, 1000)),
            st.sampled_from((0, 1000)),
        ),
        st.builds(
            Write,
            name,
            st.integers(0, 64),
            st.binary(min_size=1, max_size=16),
            st.lists(stamp, max_size=1).map(tuple),
        ),
        st.builds(SetAttributes, name, size=st.integers(0, 40)),
        st.builds(Unlink, name),
        st.builds(Rename, name | directory, name | directory),
        st.builds(MakeDirectory, directory, st.just(0o755), st.just(0), st.just(0)),
        st.builds(RemoveDirectory, directory),
        st.builds(
            MakeSymlink,
            name | directory,
            st.sampled_from((b"a", b"/", b"..")),
            st.just(0),
            st.just(0),
        ),
    )


def _tree(root: Path) -> dict[str, tuple[object, ...]]:
    tree: dict[str, tuple[object, ...]] = {}
    for path in sorted(root.rglob("*")):
        status = path.lstat()
        if stat.S_ISREG(status.st_mode):
            # a time a stamp set must be the same; the clock's differs between the copies
            mtime = status.st_mtime_ns if status.st_mtime_ns <= STAMPED else "clock"
            owner = (status.st_mode, status.st_uid, status.st_gid)
            tree[str(path.relative_to(root))] = ("file", path.read_bytes(), mtime, owner)
        elif stat.S_ISLNK(status.st_mode):
            tree[str(path.relative_to(root))] = ("link", os.readlink(path))
        else:
            tree[str(path.relative_to(root))] = ("dir",)
    return tree


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(stream=st.lists(_mutation(), min_size=1, max_size=40))
def test_kept_descriptors_leave_the_copy_as_applies_by_path_do(
    tmp_path_factory: pytest.TempPathFactory, stream: list[Mutation]
) -> None:
    base = tmp_path_factory.mktemp("kept")
    by_path, kept = base / "by-path", base / "kept"
    by_path.mkdir()
    kept.mkdir()
    fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY) for root in (by_path, kept)]
    files = OpenFiles(fds[1], held=2)
    try:
        for mutation in stream:
            outcomes = []
            for root_fd, kept_files in zip(fds, (None, files), strict=True):
                try:
                    apply(root_fd, mutation, kept_files)
                    outcomes.append(None)
                except OSError as exc:
                    outcomes.append(exc.errno)
            assert outcomes[0] == outcomes[1], mutation  # the same refusals, the same errors
        assert _tree(kept) == _tree(by_path)
    finally:
        files.forget()
        for fd in fds:
            os.close(fd)
