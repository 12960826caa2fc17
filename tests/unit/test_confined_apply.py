"""A secondary applies, repairs and answers only beneath its copy's root, through no symlink.

The report: a stream sent ``MakeSymlink("evil" -> /outside)`` and then mutations on
``evil/...``; the receiver, as root, wrote, chmodded, chowned, set xattrs on, deleted and
hard-linked files outside its directory, and answered listings and hashes of them. Here every
kind of item, strict, tolerant and as a resync repair, is aimed through symlinks (absolute,
relative, ``..``-made, to files and to directories) and at paths with ``..``; nothing outside
the copy may change, and no answer may describe it — also when writes go through the
descriptors the receiver keeps between them (`OpenFiles`), across renames and removals.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tandem.engine.protocol.queries import HashQuery, ListQuery
from tandem.engine.protocol.repairs import Ensure, LinkIfPresent, Move, RemoveTree, SetXattrs
from tandem.engine.protocol.results import FOUND
from tandem.engine.replica.open_files import OpenFiles
from tandem.engine.replica.repair import Unsettled, apply_repair, apply_tolerantly
from tandem.engine.replica.replay import apply
from tandem.engine.replica.survey import hash_file_range, survey
from tandem.engine.replication.receiver import ApplyError, _apply_batch, answer_query
from tandem.fsdriver.mutation import (
    CreateFile,
    MakeDirectory,
    MakeHardLink,
    MakeNode,
    MakeSymlink,
    RemoveDirectory,
    RemoveXattr,
    Rename,
    SetAttributes,
    SetXattr,
    Stamp,
    Sync,
    Unlink,
    Write,
)

# every object outside carries this modification time, which nothing in a stream sets: a
# listing that shows it describes something outside
OUTSIDE_MTIME_NS = 777_777_777_000_000_000
# paths through every kind of way out: absolute and relative links to a directory outside, a
# link to a file outside, a link up to the copy's parent, and a link to the copy itself
WAYS_OUT = (b"abs", b"rel", b"up/rel", b"dir/up/abs", b"self")
ESCAPING = (
    *tuple(
        way + b"/" + tail
        for way in WAYS_OUT
        for tail in (b"secret-file", b"secret-dir/secret-inner")
    ),
    b"fl",
    b"dir/up/secret-file",
    b"abs/new",
    b"rel/secret-dir/new",
    b"self/dir/x",
)
INSIDE = (b"dir", b"dir/x", b"y", b"z", b"dir/z")
PATHS = ESCAPING + INSIDE + WAYS_OUT


def _world(base: Path) -> tuple[Path, Path]:
    outside, copy = base / "outside", base / "copy"
    (outside / "secret-dir").mkdir(parents=True)
    (outside / "secret-file").write_bytes(b"outside data")
    (outside / "secret-dir" / "secret-inner").write_bytes(b"deeper outside data")
    os.chmod(outside / "secret-file", 0o644)
    for path in (outside / "secret-dir" / "secret-inner", outside / "secret-file"):
        os.utime(path, ns=(OUTSIDE_MTIME_NS, OUTSIDE_MTIME_NS))
    for path in (outside / "secret-dir", outside):
        os.utime(path, ns=(OUTSIDE_MTIME_NS, OUTSIDE_MTIME_NS))
    copy.mkdir()
    (copy / "dir").mkdir()
    (copy / "dir" / "x").write_bytes(b"inside")
    os.symlink(str(outside), copy / "abs")
    os.symlink("../outside", copy / "rel")
    os.symlink(str(outside / "secret-file"), copy / "fl")
    os.symlink("..", copy / "dir" / "up")
    os.symlink("..", copy / "up")
    os.symlink(".", copy / "self")
    return outside, copy


def _snapshot(top: Path) -> dict[str, tuple[object, ...]]:
    """Everything a write, chmod, chown, xattr, link or removal would change (not atime)."""
    seen: dict[str, tuple[object, ...]] = {}
    for here, dirs, files in os.walk(top, followlinks=False):
        for name in [".", *dirs, *files]:
            path = os.path.join(here, name)
            st_ = os.lstat(path)
            content = b""
            if stat.S_ISREG(st_.st_mode):
                content = Path(path).read_bytes()
            xattrs = tuple(sorted((n, os.getxattr(path, n)) for n in os.listxattr(path)))
            seen[os.path.relpath(path, top)] = (
                st_.st_mode,
                st_.st_uid,
                st_.st_gid,
                st_.st_size,
                st_.st_mtime_ns,
                st_.st_nlink,
                st_.st_ino,
                content,
                xattrs,
            )
    return seen


def _items(path: bytes, other: bytes) -> list[object]:
    stamp = (Stamp(path, 1, 2),)
    return [
        Write(path, 0, b"INJECTED"),
        SetAttributes(path, mode=0o4755),
        SetAttributes(path, uid=4242, gid=4242),
        SetAttributes(path, size=0),
        CreateFile(path, 0o4755, 0, 0),
        MakeDirectory(path, 0o777, 0, 0),
        MakeNode(path, stat.S_IFIFO | 0o666, 0, 0, 0),
        MakeSymlink(path, b"/etc/shadow", 0, 0),
        MakeHardLink(other, path),
        MakeHardLink(path, other),
        Unlink(path),
        RemoveDirectory(path),
        Rename(path, other),
        Rename(other, path),
        Rename(path, other, 2),  # RENAME_EXCHANGE
        SetXattr(path, b"user.injected", b"1"),
        RemoveXattr(path, b"user.mark"),
        Sync(path),
        Write(other, 0, b"x", stamps=stamp),
        Ensure(path, stat.S_IFREG | 0o4755, 4242, 4242, fresh=True),
        Ensure(path, stat.S_IFDIR | 0o777, 4242, 4242),
        Ensure(path, stat.S_IFLNK | 0o777, 0, 0, target=b"/"),
        RemoveTree(path),
        SetXattrs(path, ((b"user.injected", b"1"),)),
        Move(path, other),
        Move(other, path),
        LinkIfPresent(path, other),
        LinkIfPresent(other, path),
    ]


def _apply_every_way(root_fd: int, item: object, files: OpenFiles) -> None:
    """Strictly (by path, and as the receiver does, through the descriptors `files` keeps),
    tolerantly (a mutation) or as a repair: a refusal is an error, never a change beyond the
    copy."""
    if isinstance(item, Ensure | RemoveTree | SetXattrs | Move | LinkIfPresent):
        ways = [lambda: apply_repair(root_fd, item), lambda: _received(root_fd, item, files)]
    else:
        ways = [
            lambda: apply(root_fd, item),  # type: ignore[arg-type]
            lambda: apply_tolerantly(root_fd, item),  # type: ignore[arg-type]
            lambda: _received(root_fd, item, files),
            lambda: _received(root_fd, item, files, tolerant=True),
        ]
    for way in ways:
        try:
            way()
        except (OSError, Unsettled, ApplyError):
            pass


def _received(root_fd: int, item: object, files: OpenFiles, *, tolerant: bool = False) -> None:
    _apply_batch(root_fd, [(1, item)], False, tolerant, files)  # type: ignore[list-item]


def _assert_nothing_revealed(root_fd: int, outside: Path, path: bytes) -> None:
    outside_inodes = {os.lstat(p).st_ino for p in [outside, *outside.rglob("*")]}
    listing = survey(root_fd, path)
    for entry in listing or ():
        assert entry.mtime_ns != OUTSIDE_MTIME_NS, (path, entry)
    hashes = hash_file_range(root_fd, path, 0, 1 << 20, 4096)
    if hashes.status == FOUND:
        assert hashes.ino not in outside_inodes, path
    for query in (ListQuery(path), HashQuery(path, 0, 1 << 20, 4096)):
        answer_query(root_fd, query, 4)  # answers as the two calls above did, never fails


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path, int]:
    outside, copy = _world(tmp_path)
    os.setxattr(outside / "secret-file", "user.mark", b"outside")
    os.utime(outside / "secret-file", ns=(OUTSIDE_MTIME_NS, OUTSIDE_MTIME_NS))
    root_fd = os.open(copy, os.O_RDONLY | os.O_DIRECTORY)
    yield outside, copy, root_fd
    os.close(root_fd)


@pytest.mark.parametrize("path", ESCAPING)
def test_no_item_reaches_outside_the_copy_through_a_symlink(
    world: tuple[Path, Path, int], path: bytes
) -> None:
    outside, _copy, root_fd = world
    before = _snapshot(outside)
    files = OpenFiles(root_fd)
    for other in (b"dir/x", b"fl", b"abs/secret-file"):
        for item in _items(path, other):
            _apply_every_way(root_fd, item, files)
            assert _snapshot(outside) == before, item
    files.forget()
    _assert_nothing_revealed(root_fd, outside, path)


def test_a_path_through_a_symlink_is_refused_not_followed(world: tuple[Path, Path, int]) -> None:
    outside, copy, root_fd = world
    with pytest.raises(OSError) as refused:
        apply(root_fd, Write(b"abs/secret-file", 0, b"INJECTED"))
    assert refused.value.errno == errno.ELOOP
    assert (outside / "secret-file").read_bytes() == b"outside data"
    # the link itself is the copy's own: it can be replaced, and its replacement written
    apply(root_fd, Unlink(b"abs"))
    apply(root_fd, MakeDirectory(b"abs", 0o755, 0, 0))
    apply(root_fd, CreateFile(b"abs/secret-file", 0o644, 0, 0))
    apply(root_fd, Write(b"abs/secret-file", 0, b"inside now"))
    assert (copy / "abs" / "secret-file").read_bytes() == b"inside now"
    assert (outside / "secret-file").read_bytes() == b"outside data"


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_a_device_node_is_never_opened(world: tuple[Path, Path, int], kind: str) -> None:
    """A stream may create them (a copy can hold device nodes), but a write, truncate or sync
    on one is refused at once: opening a fifo would block the receiver for good (a random
    stream found it), opening a device acts on the host's device."""
    _, copy, root_fd = world
    if kind == "fifo":
        apply(root_fd, MakeNode(b"node", stat.S_IFIFO | 0o666, 0, 0, 0))
    else:  # the host's /dev/zero: written to, it would swallow the data without a word
        rdev = os.stat("/dev/zero").st_rdev
        apply(root_fd, MakeNode(b"node", stat.S_IFCHR | 0o666, rdev, 0, 0))
    signal.alarm(10)  # a blocked open would hang the test, not fail it
    try:
        for item in (
            Write(b"node", 0, b"data"),
            SetAttributes(b"node", size=0),
            Sync(b"node", data_only=True),
        ):
            with pytest.raises(OSError) as refused:
                apply(root_fd, item)
            assert refused.value.errno == errno.EINVAL, item
    finally:
        signal.alarm(0)
    assert stat.S_IFMT(os.lstat(copy / "node").st_mode) in (stat.S_IFIFO, stat.S_IFCHR)


def test_operations_on_a_symlink_act_on_the_link(world: tuple[Path, Path, int]) -> None:
    outside, copy, root_fd = world
    apply(root_fd, SetAttributes(b"fl", uid=4242, gid=4242))
    apply(root_fd, SetAttributes(b"fl", mode=0o777))
    assert os.lstat(copy / "fl").st_uid == 4242
    assert os.stat(outside / "secret-file").st_uid == 0
    assert stat.S_IMODE(os.stat(outside / "secret-file").st_mode) == 0o644
    listing = survey(root_fd, b"fl")
    assert listing is not None and stat.S_ISLNK(listing[0].mode)


def test_a_resync_replaces_a_symlink_standing_where_a_directory_belongs(
    world: tuple[Path, Path, int],
) -> None:
    outside, copy, root_fd = world
    before = _snapshot(outside)
    apply_repair(root_fd, Ensure(b"abs/secret-dir/new", stat.S_IFREG | 0o644, 0, 0, fresh=True))
    assert (copy / "abs").is_dir() and not (copy / "abs").is_symlink()
    assert (copy / "abs" / "secret-dir" / "new").is_file()
    assert _snapshot(outside) == before


def _item_strategy() -> st.SearchStrategy[object]:
    path = st.sampled_from(PATHS)
    return st.tuples(path, path, st.integers(0, 27)).map(lambda t: _items(t[0], t[1])[t[2]])


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(items=st.lists(_item_strategy(), min_size=1, max_size=25))
def test_random_streams_never_change_or_reveal_anything_outside(
    tmp_path_factory: pytest.TempPathFactory, items: list[object]
) -> None:
    outside, copy = _world(tmp_path_factory.mktemp("confined"))
    root_fd = os.open(copy, os.O_RDONLY | os.O_DIRECTORY)
    try:
        before = _snapshot(outside)
        files = OpenFiles(root_fd, held=3)  # small: evictions happen too
        for item in items:
            _apply_every_way(root_fd, item, files)
        files.forget()
        assert _snapshot(outside) == before
        for path in PATHS:
            _assert_nothing_revealed(root_fd, outside, path)
    finally:
        os.close(root_fd)
