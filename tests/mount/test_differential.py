"""The same operations, on a plain directory and through the mount, must give the same results:
return values, errno, contents, modes, owners, link counts, xattrs, timestamp behaviour.
Each script runs as root and as an unprivileged user."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NOBODY, Mounted, run_ops, start_mount
from tests.helpers.treediff import diff, snapshot

pytestmark = [pytest.mark.root, pytest.mark.both_drivers]

LONG = "n" * 256

SCRIPTS: dict[str, list[list[Any]]] = {
    "files": [
        ["write", "f", 0, "hello world", []],
        ["read", "f"],
        ["write", "f", 6, "there", []],
        ["write", "f", 0, "++", ["O_APPEND"]],
        ["read", "f"],
        ["truncate", "f", 4],
        ["truncate", "f", 9],
        ["read", "f"],
        ["stat", "f"],
        ["open_trunc", "f"],
        ["stat", "f"],
        ["create_excl", "f", 0o600],
        ["create_excl", "g", 0o640],
        ["stat", "g"],
        ["write", "h", 0, "x", ["O_EXCL"]],
        ["write", "h", 0, "y", ["O_TRUNC"]],
        ["read", "h"],
        ["write", "h", 3, "z", ["O_DSYNC"]],
        ["read", "h"],
        ["fsync", "h"],
        ["sparse", "s", 1 << 24, "tail"],
        ["read", "missing"],
        ["truncate", "missing", 0],
    ],
    "directories": [
        ["mkdir", "d", 0o755],
        ["mkdir", "d", 0o755],
        ["mkdir", "d/e", 0o700],
        ["mkdir", "d/e/f", 0o777],
        ["write", "d/e/f/x", 0, "1", []],
        ["rmdir", "d/e"],
        ["rmdir", "nope"],
        ["listdir", "d/e/f"],
        ["listdir_all", "d/e"],
        ["unlink", "d/e/f/x"],
        ["rmdir", "d/e/f"],
        ["stat", "d"],
        ["stat", "d/e"],
        ["write", "d", 0, "x", []],
        ["mkdir", "d/e/" + LONG, 0o755],
        ["write", "file", 0, "x", []],
        ["mkdir", "file/sub", 0o755],
        ["unlink", "d"],
        ["rmdir", "file"],
    ],
    "renames": [
        ["write", "a", 0, "A", []],
        ["write", "b", 0, "B", []],
        ["rename", "a", "b", "noreplace"],
        ["rename", "a", "b", "exchange"],
        ["read", "a"],
        ["read", "b"],
        ["rename", "a", "b", "replace"],
        ["read", "b"],
        ["stat", "a"],
        ["mkdir", "d1", 0o755],
        ["mkdir", "d2", 0o755],
        ["write", "d2/x", 0, "x", []],
        ["rename", "d1", "d2", "replace"],
        ["rename", "b", "d1", "replace"],
        ["rename", "d1", "b", "replace"],
        ["mkdir", "d3", 0o755],
        ["rename", "d3", "d1", "replace"],
        ["listdir", "."],
        ["rename", "d2", "d2/inner", "replace"],
        ["rename", "b", "b", "replace"],
        ["link", "b", "b2"],
        ["rename", "b", "b2", "replace"],
        ["stat", "b"],
        ["rename", "d2", "d1/moved", "replace"],
        ["read", "d1/moved/x"],
        ["write", "d1/moved/x", 0, "y", ["O_APPEND"]],
        ["read", "d1/moved/x"],
        ["rename", "nope", "zz", "replace"],
        ["rename", "b", "d1", "exchange"],
        ["stat", "d1"],
        ["listdir", "b"],
    ],
    "links": [
        ["write", "f", 0, "data", []],
        ["link", "f", "g"],
        ["link", "f", "g"],
        ["stat", "f"],
        ["write", "g", 4, "more", []],
        ["read", "f"],
        ["unlink", "f"],
        ["stat", "g"],
        ["symlink", "g", "s"],
        ["symlink", "missing", "dangling"],
        ["readlink", "s"],
        ["read", "s"],
        ["read", "dangling"],
        ["stat", "s"],
        ["symlink", "loop2", "loop1"],
        ["symlink", "loop1", "loop2"],
        ["read", "loop1"],
        ["mkdir", "d", 0o755],
        ["link", "d", "dlink"],
        ["link", "s", "s2"],
        ["stat", "s2"],
        ["readlink", "g"],
        ["unlink", "missing"],
        ["chown", "s", 0, 0],
        ["chown", "dangling", 0, 0],
        ["symlink", "self", "self"],
        ["chown", "self", 0, 0],
        ["stat", "s"],
    ],
    "permissions": [
        ["write", "f", 0, "secret", []],
        ["chmod", "f", 0o000],
        ["read", "f"],
        ["write", "f", 0, "x", []],
        ["access", "f", 4],
        ["chmod", "f", 0o4755],
        ["stat", "f"],
        ["write", "f", 0, "y", []],
        ["stat", "f"],
        ["chmod", "f", 0o2755],
        ["stat", "f"],
        ["chmod", "f", 0o6775],
        ["truncate", "f", 3],
        ["stat", "f"],
        ["chown", "f", 0, 0],
        ["chown", "f", 1, 1],
        ["stat", "f"],
        ["mkdir", "d", 0o700],
        ["write", "d/x", 0, "x", []],
        ["chmod", "d", 0o500],
        ["write", "d/y", 0, "y", []],
        ["unlink", "d/x"],
        ["chmod", "d", 0o300],
        ["listdir", "d"],
        ["read", "d/x"],
        ["chmod", "d", 0o755],
        ["mkdir", "sticky", 0o1777],
        ["stat", "sticky"],
        ["mkdir", "sg", 0o755],
        ["chmod", "sg", 0o2775],
        ["mkdir", "sg/sub", 0o755],
        ["write", "sg/file", 0, "x", []],
        ["stat", "sg/sub"],
        ["stat", "sg/file"],
        ["chmod", "missing", 0o644],
    ],
    "xattrs": [
        ["write", "f", 0, "x", []],
        ["setxattr", "f", "user.a", "1", 0],
        ["setxattr", "f", "user.a", "2", 1],
        ["setxattr", "f", "user.b", "3", 2],
        ["setxattr", "f", "user.a", "4", 2],
        ["getxattr", "f", "user.a"],
        ["getxattr", "f", "user.none"],
        ["listxattr", "f"],
        ["removexattr", "f", "user.a"],
        ["removexattr", "f", "user.a"],
        ["listxattr", "f"],
        ["setxattr", "f", "user.big", "v" * 3000, 0],
        ["getxattr", "f", "user.big"],
        ["setxattr", "f", "trusted.t", "t", 0],
        ["symlink", "f", "s"],
        ["setxattr", "s", "user.a", "1", 0],
        ["mkdir", "d", 0o755],
        ["setxattr", "d", "user.dir", "yes", 0],
        ["listxattr", "d"],
        ["chmod", "f", 0o444],
        ["setxattr", "f", "user.ro", "1", 0],
    ],
    "timestamps": [
        ["write", "f", 0, "x", []],
        ["age", "f"],
        ["write", "f", 1, "y", []],
        ["mtime_is_old", "f"],
        ["age", "f"],
        ["read", "f"],
        ["mtime_is_old", "f"],
        ["chmod", "f", 0o600],
        ["mtime_is_old", "f"],
        ["truncate", "f", 10],
        ["mtime_is_old", "f"],
        ["mkdir", "d", 0o755],
        ["age", "d"],
        ["write", "d/new", 0, "x", []],
        ["mtime_is_old", "d"],
        ["age", "d"],
        ["setxattr", "d", "user.x", "1", 0],
        ["mtime_is_old", "d"],
        ["utime", "f", 1_234_567_890_123_456_789, 1_111_111_111_222_222_222],
        ["mtime_is_old", "f"],
        ["utime_omit_atime", "f", 1_500_000_000],
        ["age", "f"],
        ["utime_now", "f"],
        ["mtime_is_old", "f"],
        ["age", "d"],
        ["unlink", "d/new"],
        ["mtime_is_old", "d"],
        ["age", "f"],
        ["open_trunc", "f"],
        ["mtime_is_old", "f"],
        ["ctime_changes", "f", "chmod", "f", 0o640],
        ["ctime_changes", "f", "write", "f", 0, "more", []],
        ["ctime_changes", "f", "truncate", "f", 1],
        ["ctime_changes", "f", "setxattr", "f", "user.c", "1", 0],
        ["ctime_changes", "f", "link", "f", "f2"],
        ["ctime_changes", "f", "unlink", "f2"],
        ["ctime_changes", "f", "utime", "f", 5, 5],
        ["ctime_changes", "f", "rename", "f", "f3", "replace"],
        ["ctime_changes", "d", "write", "d/other", 0, "x", []],
        ["ctime_changes", "d", "unlink", "d/other"],
        ["ctime_changes", "d", "chown", "d", -1, -1],
    ],
    "special_files": [
        ["mknod", "fifo", "fifo", 0o640],
        ["mknod", "sock", "sock", 0o600],
        ["mknod", "null", "chr", 0o666],
        ["stat", "fifo"],
        ["stat", "sock"],
        ["stat", "null"],
        ["mknod", "fifo", "fifo", 0o640],
        ["chmod", "fifo", 0o600],
        ["stat", "fifo"],
        ["mknod", "fifo2", "fifo", 0o640],
        ["open_unlink_write", "fifo2", ""],
        ["mkdir", "gone", 0o755],
        ["rmdir_while_inside", "gone"],
    ],
    "open_files": [
        ["open_unlink_write", "gone", "still here"],
        ["listdir", "."],
        ["rename_while_open", "a", "b", "appended"],
        ["write", "m", 0, "0123456789", []],
        ["mmap_write", "m", 2, "MMAP"],
        ["read", "m"],
        ["mmap_write", "m2", 0, "fresh"],
        ["read", "m2"],
        ["direct_write", "direct", "unbuffered"],
        ["read", "direct"],
    ],
    "listings": [
        ["readdir_while_changing", "big", 1500],
        ["statvfs", "."],
        ["listdir_all", "."],
    ],
}


@pytest.fixture(scope="module")
def arenas() -> Iterator[tuple[Path, Mounted]]:
    base = Path(tempfile.mkdtemp(prefix="tandem-diff-", dir="/tmp"))
    base.chmod(0o755)
    (base / "plain").mkdir()
    mount = start_mount(base / "mnt")
    try:
        yield base / "plain", mount
    finally:
        try:
            mount.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def _fresh(root: Path, name: str, user: tuple[int, int]) -> Path:
    path = root / name
    path.mkdir()
    os.chown(path, *user)
    return path


@pytest.mark.parametrize(
    ("user", "umask"),
    [((0, 0), 0o022), (NOBODY, 0o022), (NOBODY, 0o077), ((0, 0), 0o000)],
    ids=["root", "nobody", "nobody-umask077", "root-umask000"],
)
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_same_results_as_plain_directory(
    arenas: tuple[Path, Mounted], script: str, user: tuple[int, int], umask: int
) -> None:
    plain_root, mount = arenas
    tag = f"{script}-{user[0]}-{umask:o}"
    plain = _fresh(plain_root, tag, user)
    mounted = _fresh(mount.path, tag, user)

    expected = run_ops(plain, SCRIPTS[script], user, umask)
    got = run_ops(mounted, SCRIPTS[script], user, umask)

    mismatches = [
        f"#{i} {op}: plain {e} != mount {g}"
        for i, (op, e, g) in enumerate(zip(SCRIPTS[script], expected, got, strict=True))
        if e != g
    ]
    assert not mismatches, "\n".join(mismatches)
    assert not diff(snapshot(str(plain)), snapshot(str(mounted)))


# Two users in turn on the same files: what one may do to the other's (sticky directories,
# permission bits, ownership rules), compared between plain directory and mount.
PHASES: list[tuple[tuple[int, int], list[list[Any]]]] = [
    (
        (0, 0),
        [
            ["mkdir", "shared", 0o777],
            ["chmod", "shared", 0o1777],
            ["write", "shared/roots", 0, "root data", []],
            ["chmod", "shared/roots", 0o666],
            ["write", "private", 0, "secret", []],
            ["chmod", "private", 0o600],
            ["mkdir", "closed", 0o700],
            ["mkdir", "group", 0o770],
            ["chown", "group", 0, NOBODY[1]],
            ["chmod", "group", 0o2770],
        ],
    ),
    (
        NOBODY,
        [
            ["unlink", "shared/roots"],
            ["rename", "shared/roots", "shared/mine", "replace"],
            ["write", "shared/roots", 0, "nobody was here", ["O_APPEND"]],
            ["read", "shared/roots"],
            ["chmod", "shared/roots", 0o777],
            ["chown", "shared/roots", NOBODY[0], NOBODY[1]],
            ["utime", "shared/roots", 5, 5],
            ["utime_now", "shared/roots"],
            ["read", "private"],
            ["write", "private", 0, "x", []],
            ["listdir", "closed"],
            ["write", "closed/x", 0, "x", []],
            ["write", "shared/theirs", 0, "x", []],
            ["write", "group/file", 0, "x", []],
            ["stat", "group/file"],
            ["mkdir", "group/sub", 0o755],
            ["stat", "group/sub"],
            ["setxattr", "shared/roots", "user.n", "1", 0],
            ["access", "private", 4],
            ["access", "shared/roots", 2],
        ],
    ),
    (
        (0, 0),
        [
            ["unlink", "shared/theirs"],
            ["stat", "shared/roots"],
            ["read", "shared/roots"],
        ],
    ),
]


def test_users_acting_on_each_others_files(arenas: tuple[Path, Mounted]) -> None:
    plain_root, mount = arenas
    plain = _fresh(plain_root, "cross-user", (0, 0))
    mounted = _fresh(mount.path, "cross-user", (0, 0))
    plain.chmod(0o755)
    mounted.chmod(0o755)
    for user, ops in PHASES:
        expected = run_ops(plain, ops, user)
        got = run_ops(mounted, ops, user)
        mismatches = [
            f"{user} #{i} {op}: plain {e} != mount {g}"
            for i, (op, e, g) in enumerate(zip(ops, expected, got, strict=True))
            if e != g
        ]
        assert not mismatches, "\n".join(mismatches)
    assert not diff(snapshot(str(plain)), snapshot(str(mounted)))
