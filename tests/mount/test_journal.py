"""The reintegration journal as the mount writes it: it hears of every change before the tree
changes, it names everything the replication stream carries, and a killed mount leaves no change
unnamed."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given

from tandem.engine.reintegration.journal import ChangeJournal, History, read_history
from tandem.fsdriver import mutation as m
from tandem.fsdriver.change import UNBOUNDED, Change, ChangeKind
from tandem.fsdriver.mount import is_tandem_mount, unmount
from tests.conftest import Mounted, run_ops, start_mount
from tests.mount.test_random_sequences import example_settings, sequences

pytestmark = [pytest.mark.root, pytest.mark.both_drivers]
BLOCK = 4096


def journal_in_sync(directory: Path) -> Path:
    """A journal as a node leaves it after a completed resync: trusted, empty."""
    journal = ChangeJournal(directory)
    journal.resynced(journal.sync_point(), 0, "g0")
    journal.close()
    return directory


def _named(history: History, mutation: m.Mutation) -> bool:
    """Whether the journal names where ``mutation`` changed the tree."""
    changes = history.changes
    committed = {(c.kind, c.path, c.other) for i, c in enumerate(changes) if i in history.committed}

    def has(kind: ChangeKind, path: bytes) -> bool:
        return any(c.kind == kind and c.path == path for c in changes)

    match mutation:
        case m.Write(path=path, offset=offset, data=data):
            return _covered(_data_ranges(changes, path), offset, offset + len(data))
        case m.SetAttributes(path=path, size=size):
            if size is not None:  # everything from the new end on may differ
                return _covered(_data_ranges(changes, path), size, UNBOUNDED)
            return has(ChangeKind.METADATA, path)
        case m.CreateFile() | m.MakeDirectory() | m.MakeNode() | m.MakeSymlink():
            return has(ChangeKind.CREATE, mutation.path)
        case m.MakeHardLink(existing=existing, path=path):
            return (ChangeKind.LINK, existing, path) in committed
        case m.Unlink(path=path) | m.RemoveDirectory(path=path):
            return has(ChangeKind.REMOVE, path)
        case m.Rename(old=old, new=new, flags=flags):
            kind = ChangeKind.EXCHANGE if flags & 2 else ChangeKind.RENAME
            return (kind, old, new) in committed
        case m.SetXattr(path=path) | m.RemoveXattr(path=path):
            return has(ChangeKind.METADATA, path)
        case m.Sync():
            return True
    raise AssertionError(f"unexpected mutation {mutation}")


def _data_ranges(changes: list[Change], path: bytes) -> list[tuple[int, int]]:
    found = []
    for c in changes:
        if c.path == path and c.kind == ChangeKind.WRITE:
            found.append((c.offset, c.offset + c.length))
        elif c.path == path and c.kind == ChangeKind.RESIZE:
            found.append((c.offset, UNBOUNDED))
    return sorted(found)


def _covered(ranges: list[tuple[int, int]], start: int, end: int) -> bool:
    """Whether the union of ``ranges`` (sorted) contains [start, end)."""
    reached = start
    for a, b in ranges:
        if a > reached:
            break
        reached = max(reached, b)
        if reached >= end:
            return True
    return reached >= end


@dataclass
class JournalArena:
    mount: Mounted
    journal: Path
    examples: int = 0


@pytest.fixture(scope="module")
def journal_arena() -> Iterator[JournalArena]:
    base = Path(tempfile.mkdtemp(prefix="tandem-journal-", dir="/tmp"))
    base.chmod(0o755)
    journal = journal_in_sync(base / "journal")
    mount = start_mount(base / "mnt", extra=["--journal", str(journal)])
    try:
        yield JournalArena(mount, journal)
    finally:
        try:
            mount.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


@example_settings("TANDEM_HYPOTHESIS_EXAMPLES", 60)
@given(ops=sequences)
def test_the_journal_names_every_replicated_change(
    journal_arena: JournalArena, ops: list[list[Any]]
) -> None:
    journal_arena.examples += 1
    root = journal_arena.mount.path / f"ex{journal_arena.examples}"
    root.mkdir()
    run_ops(root, ops)
    assert journal_arena.mount.record is not None
    stream = [m.decode_json(line) for line in journal_arena.mount.record.read_text().splitlines()]
    history = read_history(journal_arena.journal)
    assert history.complete
    unnamed = [mutation for mutation in stream if not _named(history, mutation)]
    assert unnamed == []


def test_a_change_the_journal_cannot_record_is_refused(workspace: Path) -> None:
    """Recorded first, changed second: with the journal's disk full the change is refused
    (ENOSPC, and the log says it is the journal) and the tree is untouched, so no change can
    ever escape the journal."""
    small = workspace / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], check=True)
    try:
        journal = journal_in_sync(small / "journal")
        (workspace / "mnt").mkdir()
        (workspace / "mnt" / "f").write_bytes(bytes(8 << 20))
        mount = start_mount(workspace / "mnt", record=False, extra=["--journal", str(journal)])
        try:
            filler = small / "filler"
            with pytest.raises(OSError), filler.open("wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            # the segment's last page still has room: write new ranges until a record cannot
            target = mount.path / "f"
            refused_at = None
            with target.open("r+b", buffering=0) as f:
                for index in range(2000):
                    try:
                        os.pwrite(f.fileno(), b"X" * 10, index * 4096)
                    except OSError as exc:
                        assert exc.errno == errno.ENOSPC
                        refused_at = index * 4096
                        break
            assert refused_at is not None, "the journal never ran out of room"
            with pytest.raises(OSError):
                (mount.path / "newdir").mkdir()
            assert target.read_bytes()[refused_at : refused_at + 10] == bytes(10)
            assert not (mount.path / "newdir").exists()
            filler.unlink()
            with target.open("r+b", buffering=0) as f:
                os.pwrite(f.fileno(), b"X" * 10, refused_at)
            assert target.read_bytes()[refused_at : refused_at + 10] == b"X" * 10
        finally:
            code = mount.process.stop()
            assert code == 0, mount.process.log()
        assert "cannot record a change (No space left on device)" in mount.process.log()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


WRITER = r"""
import os, random, sys
root, seconds = sys.argv[1], float(sys.argv[2])
import time
deadline = time.monotonic() + seconds
rng = random.Random(7)
fds = [os.open(os.path.join(root, "f%d" % i), os.O_RDWR) for i in range(8)]
count = 0
try:
    while time.monotonic() < deadline:
        choice = rng.random()
        if choice < 0.85:
            fd = rng.choice(fds)
            os.pwrite(fd, os.urandom(rng.choice([100, 4096, 9000])), rng.randrange(0, 1 << 20))
        elif choice < 0.95:
            with open(os.path.join(root, "new%d" % count), "wb") as f:
                f.write(b"n" * rng.randrange(1, 20000))
        else:
            os.truncate(os.path.join(root, "f%d" % rng.randrange(8)), rng.randrange(0, 1 << 20))
        count += 1
except OSError:
    pass  # the mount died under us: that is the test
print(count)
"""


def _differing_runs(old: bytes, new: bytes) -> list[tuple[int, int]]:
    """Byte ranges where ``new`` differs from ``old`` (a length change counts as a difference)."""
    runs: list[tuple[int, int]] = []
    common = min(len(old), len(new))
    for block in range(0, common, BLOCK):
        if old[block : block + BLOCK] == new[block : block + BLOCK]:
            continue
        for chunk in range(block, min(block + BLOCK, common), 64):
            if old[chunk : chunk + 64] == new[chunk : chunk + 64]:
                continue
            for offset in range(chunk, min(chunk + 64, common)):
                if old[offset] == new[offset]:
                    continue
                if runs and runs[-1][1] == offset:
                    runs[-1] = (runs[-1][0], offset + 1)
                else:
                    runs.append((offset, offset + 1))
    if len(old) != len(new):
        runs.append((common, max(len(old), len(new))))
    return runs


def test_a_killed_mount_leaves_every_change_named(workspace: Path) -> None:
    directory = workspace / "mnt"
    directory.mkdir()
    for index in range(8):
        (directory / f"f{index}").write_bytes(os.urandom(1 << 20))
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    journal = journal_in_sync(workspace / "journal")
    mount = start_mount(directory, record=False, extra=["--journal", str(journal)])
    process = mount.process.process
    assert process is not None
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory), "30"], stdout=subprocess.PIPE, text=True
    )
    try:
        time.sleep(1.5)
        process.kill()  # SIGKILL: no chance to flush or close anything
        process.wait(10)
        writes = int(writer.communicate(timeout=30)[0] or 0)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        mount.process.process = None
        if is_tandem_mount(str(directory)):
            unmount(str(directory))
    assert writes > 50, "the writer barely ran: the test proves nothing"

    history = read_history(journal)
    assert history.complete
    created = {c.path for c in history.changes if c.kind == ChangeKind.CREATE}
    unnamed = []
    for path in directory.iterdir():
        name = os.fsencode(path.name)
        if path.name not in before:
            if name not in created:
                unnamed.append((path.name, "created"))
            continue
        named = _data_ranges(history.changes, name)
        for start, end in _differing_runs(before[path.name], path.read_bytes()):
            if not _covered(named, start, end):
                unnamed.append((path.name, start, end))
    assert unnamed == []
