"""Randomly generated operation sequences (hypothesis), each run three ways:

1. on a plain directory and through the mount, as root and as an unprivileged user: the two
   transcripts (values, errno) and resulting trees must be identical;
2. the mutation stream the mount recorded for it is replayed onto a second plain copy: that copy
   must equal the mounted tree byte for byte, attribute for attribute, mtimes included. This is
   the contract the replication engine relies on.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tandem.engine.replica.replay import apply
from tandem.fsdriver.mutation import decode_json
from tests.conftest import NOBODY, Mounted, run_ops, start_mount
from tests.helpers.treediff import diff, snapshot

pytestmark = [pytest.mark.root, pytest.mark.both_drivers]

FILES = ["a", "b", "d/c", "d/e/f", "x/g"]
DIRS = ["d", "d/e", "x", "d/e/y"]
ANY = FILES + DIRS

text = st.text(alphabet="abcxyz\n", min_size=0, max_size=3000)
offsets = st.integers(0, 70_000)
modes = st.sampled_from([0o644, 0o600, 0o755, 0o4755, 0o2775, 0o000, 0o1777])

operations = st.one_of(
    st.tuples(
        st.just("write"),
        st.sampled_from(FILES),
        offsets,
        text,
        st.lists(st.sampled_from(["O_APPEND", "O_TRUNC"]), max_size=2, unique=True),
    ).map(list),
    st.tuples(st.just("truncate"), st.sampled_from(FILES), st.integers(0, 100_000)).map(list),
    st.tuples(st.just("sparse"), st.sampled_from(FILES), st.integers(1 << 16, 1 << 22), text).map(
        list
    ),
    st.tuples(st.just("mkdir"), st.sampled_from(DIRS), modes).map(list),
    st.tuples(st.just("rmdir"), st.sampled_from(DIRS)).map(list),
    st.tuples(st.just("unlink"), st.sampled_from(ANY)).map(list),
    st.tuples(
        st.just("rename"),
        st.sampled_from(ANY),
        st.sampled_from(ANY),
        st.sampled_from(["replace", "noreplace", "exchange"]),
    ).map(list),
    st.tuples(st.just("link"), st.sampled_from(FILES), st.sampled_from(FILES)).map(list),
    st.tuples(st.just("symlink"), st.sampled_from(ANY), st.sampled_from(FILES)).map(list),
    st.tuples(st.just("chmod"), st.sampled_from(ANY), modes).map(list),
    st.tuples(
        st.just("chown"),
        st.sampled_from(ANY),
        st.sampled_from([0, 65534]),
        st.sampled_from([0, 65534]),
    ).map(list),
    st.tuples(
        st.just("setxattr"),
        st.sampled_from(ANY),
        st.sampled_from(["user.a", "user.b"]),
        text,
        st.just(0),
    ).map(list),
    st.tuples(
        st.just("removexattr"), st.sampled_from(ANY), st.sampled_from(["user.a", "user.b"])
    ).map(list),
    st.tuples(
        st.just("utime"), st.sampled_from(ANY), st.integers(0, 2**40), st.integers(0, 2**40)
    ).map(list),
    st.tuples(st.just("read"), st.sampled_from(FILES)).map(list),
    st.tuples(
        st.just("mmap_write"), st.sampled_from(FILES), st.integers(0, 9000), text.filter(bool)
    ).map(list),
    st.tuples(st.just("open_unlink_write"), st.sampled_from(FILES), text).map(list),
    st.tuples(
        st.just("rename_while_open"), st.sampled_from(FILES), st.sampled_from(FILES), text
    ).map(list),
    st.tuples(st.just("mknod"), st.sampled_from(FILES), st.just("fifo"), st.just(0o640)).map(list),
)
# A useful sequence needs directories to exist: start most of them with a few mkdirs.
sequences = st.lists(operations, min_size=1, max_size=25).map(
    lambda ops: [["mkdir", "d", 0o777], ["mkdir", "d/e", 0o777], ["mkdir", "x", 0o777], *ops]
)


@dataclass
class Arena:
    plain: Path
    mount: Mounted
    replica: Path
    replica_fd: int
    replayed_lines: int = 0
    examples: int = 0

    def replay_new_mutations(self) -> int:
        assert self.mount.record is not None
        lines = self.mount.record.read_text().splitlines()
        fresh = lines[self.replayed_lines :]
        # consumed even if one fails: a failing example must not poison the next ones
        self.replayed_lines = len(lines)
        for line in fresh:
            apply(self.replica_fd, decode_json(line))
        return len(fresh)


@pytest.fixture(scope="module")
def arena() -> Iterator[Arena]:
    base = Path(tempfile.mkdtemp(prefix="tandem-rand-", dir="/tmp"))
    base.chmod(0o755)
    (base / "plain").mkdir()
    (base / "replica").mkdir()
    mount = start_mount(base / "mnt")
    fd = os.open(base / "replica", os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield Arena(base / "plain", mount, base / "replica", fd)
    finally:
        os.close(fd)
        try:
            mount.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def _check(arena: Arena, ops: list[list[Any]], user: tuple[int, int]) -> None:
    arena.examples += 1
    tag = f"ex{arena.examples}-{user[0]}"
    plain, mounted = arena.plain / tag, arena.mount.path / tag
    for directory in (plain, mounted):
        directory.mkdir()
        os.chown(directory, *user)

    expected = run_ops(plain, ops, user)
    got = run_ops(mounted, ops, user)
    for i, (op, e, g) in enumerate(zip(ops, expected, got, strict=True)):
        assert e == g, f"op #{i} {op}: plain {e} != mount {g}"
    assert diff(snapshot(str(plain)), snapshot(str(mounted))) == []

    arena.replay_new_mutations()
    replayed = diff(
        snapshot(str(mounted), times=True), snapshot(str(arena.replica / tag), times=True)
    )
    assert replayed == [], "replaying the mutation stream gave another tree"


def example_settings(variable: str, default: int) -> settings:
    """Slow real-process examples: no deadline; how many comes from ``variable``."""
    return settings(
        max_examples=int(os.environ.get(variable, str(default))),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


SETTINGS = example_settings("TANDEM_HYPOTHESIS_EXAMPLES", 100)


@SETTINGS
@given(ops=sequences)
def test_random_sequences_as_root(arena: Arena, ops: list[list[Any]]) -> None:
    _check(arena, ops, (0, 0))


@SETTINGS
@given(ops=sequences)
def test_random_sequences_as_unprivileged_user(arena: Arena, ops: list[list[Any]]) -> None:
    _check(arena, ops, NOBODY)
