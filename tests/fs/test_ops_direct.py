"""The operations class called directly (no kernel): the exact mutations each operation hands to
the sink, that the answer waits for the sink, and that errors are translated, never fatal."""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import pytest
import trio
import trio.testing

from tandem.fsdriver.inode import ROOT_INODE
from tandem.fsdriver.mutation import (
    DONE,
    CreateFile,
    MakeDirectory,
    Mutation,
    Receipt,
    RecordingSink,
    Rename,
    SetAttributes,
    Stamp,
    Sync,
    Unlink,
    Write,
)
from tandem.fsdriver.ops import Passthrough


@dataclass
class Ctx:
    """Stands in for pyfuse3.RequestContext, which only the kernel side can create."""

    uid: int = os.geteuid()
    gid: int = os.getegid()
    pid: int = os.getpid()
    umask: int = 0o022


@pytest.fixture
def root(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield tmp_path, fd
    finally:
        os.close(fd)


@dataclass
class Fields:
    """Stands in for pyfuse3.SetattrFields, whose flags only the kernel side can set."""

    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_size: bool = False


def _kinds(mutations: list[Mutation]) -> list[str]:
    return [type(m).__name__ for m in mutations]


def test_each_operation_hands_exactly_its_mutations(root: tuple[Path, int]) -> None:
    path, fd = root
    sink = RecordingSink()
    ops = Passthrough(fd, sink)
    ctx = Ctx()

    async def scenario() -> None:
        info, entry = await ops.create(ROOT_INODE, b"f", 0o640, os.O_RDWR, ctx)
        assert _kinds(sink.mutations) == ["CreateFile"]
        created = sink.mutations[-1]
        assert isinstance(created, CreateFile)
        assert (created.path, created.mode, created.uid) == (b"f", 0o640, ctx.uid)
        assert created.stamps[1].path == b"."  # the parent's new mtime travels too

        assert await ops.write(info.fh, 3, b"abc") == 3
        write = sink.mutations[-1]
        assert isinstance(write, Write)
        assert (write.path, write.offset, write.data) == (b"f", 3, b"abc")
        assert write.stamps == (Stamp(b"f", *_times(path / "f")),)

        await ops.fsync(info.fh, True)
        assert sink.mutations[-1] == Sync(b"f", data_only=True)

        dir_entry = await ops.mkdir(ROOT_INODE, b"d", 0o755, ctx)
        assert isinstance(sink.mutations[-1], MakeDirectory)
        await ops.rename(ROOT_INODE, b"f", dir_entry.st_ino, b"g", 0, ctx)
        moved = sink.mutations[-1]
        assert isinstance(moved, Rename) and (moved.old, moved.new) == (b"f", b"d/g")

        # the open file followed the rename: its next write names the new path
        await ops.write(info.fh, 0, b"z")
        assert sink.mutations[-1].path == b"d/g"  # type: ignore[union-attr]

        attr = pyfuse3.EntryAttributes()
        attr.st_size = 1
        await ops.setattr(entry.st_ino, attr, Fields(update_size=True), None, ctx)
        assert sink.mutations[-1] == SetAttributes(
            b"d/g", size=1, stamps=(Stamp(b"d/g", *_times(path / "d/g")),)
        )

        await ops.unlink(dir_entry.st_ino, b"g", ctx)
        assert isinstance(sink.mutations[-1], Unlink)
        count = len(sink.mutations)
        # unlinked while open: its changes reach no surviving file, so nothing is sent
        await ops.write(info.fh, 0, b"late")
        assert len(sink.mutations) == count
        await ops.release(info.fh)

        reads = len(sink.mutations)
        await ops.getattr(dir_entry.st_ino, ctx)
        await ops.lookup(ROOT_INODE, b"d", ctx)
        assert len(sink.mutations) == reads, "reads must not produce mutations"

    trio.run(scenario)


def _times(p: Path) -> tuple[int, int]:
    st = os.lstat(p)
    return st.st_atime_ns, st.st_mtime_ns


class GateSink:
    """Holds every receipt until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.submitted: list[Mutation] = []

    def submit(self, mutation: Mutation) -> Receipt:
        self.submitted.append(mutation)
        gate = self.gate

        class Held:
            async def wait(self) -> None:
                await gate.wait()

        return Held()

    def settle(self) -> Receipt:
        return DONE


def test_answer_waits_for_the_sink(root: tuple[Path, int]) -> None:
    _, fd = root
    sink = GateSink()
    ops = Passthrough(fd, sink)

    async def scenario() -> None:
        done: list[str] = []
        async with trio.open_nursery() as nursery:

            async def mkdir() -> None:
                await ops.mkdir(ROOT_INODE, b"d", 0o755, Ctx())
                done.append("mkdir")

            nursery.start_soon(mkdir)
            await trio.testing.wait_all_tasks_blocked()
            assert len(sink.submitted) == 1, "the change is submitted at once"
            assert done == [], "but not answered before the sink acknowledges"
            sink.gate.set()
        assert done == ["mkdir"]

    trio.run(scenario)


class BrokenSink:
    def submit(self, mutation: Mutation) -> Receipt:
        raise RuntimeError("sink bug")

    def settle(self) -> Receipt:
        raise RuntimeError("sink bug")


def test_unexpected_exception_becomes_eio_and_is_logged(
    root: tuple[Path, int], caplog: pytest.LogCaptureFixture
) -> None:
    _, fd = root
    ops = Passthrough(fd, BrokenSink())

    async def scenario() -> None:
        with pytest.raises(pyfuse3.FUSEError) as raised:
            await ops.mkdir(ROOT_INODE, b"d", 0o755, Ctx())
        assert raised.value.errno == errno.EIO
        # the filesystem keeps answering
        entry = await ops.lookup(ROOT_INODE, b"d", Ctx())
        assert stat.S_ISDIR(entry.st_mode)

    with caplog.at_level(logging.ERROR):
        trio.run(scenario)
    assert any("unexpected error in mkdir" in r.message for r in caplog.records)


def test_os_errors_keep_their_errno(root: tuple[Path, int]) -> None:
    _, fd = root
    ops = Passthrough(fd, RecordingSink())

    async def scenario() -> None:
        for call, expected in [
            (ops.rmdir(ROOT_INODE, b"missing", Ctx()), errno.ENOENT),
            (ops.unlink(ROOT_INODE, b"x" * 300, Ctx()), errno.ENAMETOOLONG),
        ]:
            with pytest.raises(pyfuse3.FUSEError) as raised:
                await call
            assert raised.value.errno == expected

    trio.run(scenario)


def test_every_request_handler_is_behind_the_error_boundary() -> None:
    handlers = [
        name
        for name, value in vars(Passthrough).items()
        if not name.startswith("_") and callable(value) and name in vars(pyfuse3.Operations)
    ]
    assert len(handlers) >= 25
    unguarded = [
        n for n in handlers if n != "forget" and not hasattr(getattr(Passthrough, n), "__wrapped__")
    ]
    assert unguarded == []
