"""Crash points on a real two-node lab: a writer on the primary logs, outside the cluster, every
write the filesystem acknowledged; the primary node then dies at a random instant (SIGKILL of
all its processes, or its cable cut and then killed). Every acknowledged write must be on the
secondary's copy, whole.

At the write sync point a write is acknowledged when write(2) returns; at the fsync sync point
only once made durable (fsync, fdatasync, a write to a file opened O_DSYNC), and the writer logs
it only then, as an application that counts on a local disk would."""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.lab import LabCluster, checked_lab
from tests.helpers.mountproc import wait_for

pytestmark = [pytest.mark.root, pytest.mark.both_drivers]

SLOTS = 16
SLOT_SIZE = 4096

# Record i: "<i:08d> <crc:08x> <payload>\n". Sizes vary up to 300 KiB, so one write(2) spans
# several FUSE requests: an acknowledged record must still be whole on the secondary.
WRITER = r"""
import os, random, sys, zlib
root, log_path = sys.argv[1], sys.argv[2]
at_fsync = sys.argv[4] == "fsync"  # a record counts once made durable, not once written
log = open(log_path, "a", buffering=1)
os.makedirs(f"{root}/files", exist_ok=True)
# at the fsync sync point stream1 is opened O_DSYNC: each of its writes is durable by itself
streams = [os.open(f"{root}/stream{n}", os.O_WRONLY | os.O_CREAT | os.O_APPEND
                   | (os.O_DSYNC if at_fsync and n == 1 else 0), 0o644)
           for n in range(2)]
slots = os.open(f"{root}/slots", os.O_RDWR | os.O_CREAT, 0o644)
files = os.open(f"{root}/files", os.O_RDONLY | os.O_DIRECTORY)
rng = random.Random(int(sys.argv[3]))

def record(i, size):
    payload = (f"[{i}]".encode() * (size // 4 + 8))[:size]
    return b"%08d %08x " % (i, zlib.crc32(payload)) + payload + b"\n"

i = 0
while True:
    kind = i % 4
    if kind < 2:
        size = rng.choice([10, 1000, 5000, 70000, 300000])
        os.write(streams[kind], record(i, size))
        if (at_fsync and kind == 0) or rng.random() < 0.1:
            os.fsync(streams[kind])
    elif kind == 2:
        os.pwrite(slots, record(i, 4096 - 19), (i // 4 % 16) * 4096)
        if at_fsync:
            os.fdatasync(slots)
    else:
        tmp = f"{root}/files/.{i}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, record(i, rng.choice([1, 100, 9000])))
        if at_fsync:
            os.fsync(fd)
        os.close(fd)
        os.rename(tmp, f"{root}/files/{i}")
        if at_fsync:
            os.fsync(files)
    log.write(f"{i}\n")
    i += 1
"""


def _parse(data: bytes) -> tuple[list[tuple[int, bool]], bool]:
    """(record id, intact) for each complete line, and whether a torn tail follows."""
    records = []
    lines = data.split(b"\n")
    for line in lines[:-1]:
        number, crc, payload = line[:8], line[9:17], line[18:]
        records.append((int(number), zlib.crc32(payload) == int(crc, 16)))
    return records, lines[-1] != b""


def check_every_acknowledged_write_is_whole(copy: Path, acknowledged: list[int]) -> None:
    assert acknowledged, "the writer never got an acknowledgement"
    present: dict[int, bool] = {}
    for n in range(2):
        records, _torn_tail = _parse((copy / f"stream{n}").read_bytes())
        ids = [i for i, _ in records]
        assert ids == sorted(ids), f"stream{n} out of order"
        present.update(records)
    slots = (copy / "slots").read_bytes()
    newest_in_slot: dict[int, int] = {}
    for slot in range(len(slots) // SLOT_SIZE):
        chunk = slots[slot * SLOT_SIZE : (slot + 1) * SLOT_SIZE]
        if chunk.strip(b"\0"):
            [(number, intact)], _ = _parse(chunk)
            assert intact, f"slot {slot} holds a torn record {number}"
            newest_in_slot[slot] = number
    for name in (copy / "files").iterdir():
        if not name.name.startswith("."):
            [(number, intact)], torn = _parse(name.read_bytes())
            assert intact and not torn and number == int(name.name), f"file {name.name} torn"
            present[number] = True
    lost, torn = [], []
    for i in acknowledged:
        if i % 4 == 2:  # a slot: the secondary holds this record or a newer one for the slot
            if newest_in_slot.get(i // 4 % SLOTS, -1) < i:
                lost.append(i)
        elif i not in present:
            lost.append(i)
        elif not present[i]:
            torn.append(i)
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged writes lost: {lost[:8]}"
    assert not torn, f"acknowledged writes torn on the secondary: {torn[:8]}"


def _acknowledged(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()]


@pytest.fixture
def sync_lab(workspace: Path, request: pytest.FixtureRequest) -> Iterator[LabCluster]:
    yield from checked_lab(LabCluster(workspace / "lab", sync=request.param))


@pytest.mark.parametrize(
    ("sync_lab", "how", "attempt"),
    [
        ("write", "kill", 0),
        ("write", "kill", 1),
        ("write", "kill", 2),
        ("write", "cut", 0),
        ("write", "cut", 1),
        ("fsync", "kill", 0),
        ("fsync", "kill", 1),
        ("fsync", "cut", 0),
    ],
    indirect=["sync_lab"],
)
def test_every_acknowledged_write_survives_the_primary_dying(
    sync_lab: LabCluster, workspace: Path, how: str, attempt: int
) -> None:
    lab = sync_lab
    seed = random.randrange(1 << 30)
    log = workspace / "acknowledged.log"  # outside the cluster: the host's own disk
    writer = lab.popen("a", "python3", "-c", WRITER, str(lab.path), str(log), str(seed), lab.sync)
    try:
        wait_for(lambda: log.exists() and log.stat().st_size > 0, 20, "first acknowledgement")
        time.sleep(random.uniform(0.2, 1.5))
        if how == "cut":
            lab.cut("a")
            time.sleep(random.uniform(0.1, 1.0))  # well under the 5 s peer timeout
        lab.kill("a")
        assert writer.wait(10) != 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    acknowledged = _acknowledged(log)
    check_every_acknowledged_write_is_whole(lab.copy("b"), acknowledged)
    print(f"seed {seed}: {len(acknowledged)} acknowledged writes, all on the secondary")


def test_a_cut_primary_stops_waiting_after_the_timeout_and_says_why(workspace: Path) -> None:
    lab = LabCluster(workspace / "lab", timeout=1.5).up()
    log = workspace / "acknowledged.log"
    writer = lab.popen("a", "python3", "-c", WRITER, str(lab.path), str(log), "1", "write")
    try:
        wait_for(lambda: log.exists() and log.stat().st_size > 0, 20, "first acknowledgement")
        lab.cut("a")
        cut_at = time.monotonic()
        before = len(_acknowledged(log))
        wait_for(lambda: "going on alone" in lab.log("a"), 10, "the primary to go on alone")
        waited = time.monotonic() - cut_at
        assert 1.0 < waited < 6, f"went alone after {waited:.1f} s with a 1.5 s timeout"
        assert "did not acknowledge within 1.5 s" in lab.log("a")
        wait_for(lambda: len(_acknowledged(log)) > before + 100, 10, "writes to go on")
        assert writer.poll() is None
        check_every_acknowledged_write_is_whole(lab.copy("b"), _acknowledged(log)[:before])
    finally:
        writer.kill()
        writer.wait()
        lab.down()


def _record(i: int, payload: bytes) -> bytes:
    return b"%08d %08x " % (i, zlib.crc32(payload)) + payload + b"\n"


def test_the_checker_itself_catches_lost_and_torn_writes(workspace: Path) -> None:
    (workspace / "files").mkdir()
    (workspace / "stream0").write_bytes(_record(0, b"zero") + _record(4, b"four"))
    (workspace / "stream1").write_bytes(_record(1, b"one") + _record(5, b"fivX")[:-3])
    slot = _record(2, b"s" * (SLOT_SIZE - 19))
    (workspace / "slots").write_bytes(slot)
    (workspace / "files" / "3").write_bytes(_record(3, b"three"))
    check_every_acknowledged_write_is_whole(workspace, [0, 1, 2, 3, 4])
    with pytest.raises(AssertionError, match="1 of 6 acknowledged writes lost: \\[5\\]"):
        check_every_acknowledged_write_is_whole(workspace, [0, 1, 2, 3, 4, 5])
    (workspace / "stream0").write_bytes(_record(0, b"zero") + _record(4, b"four")[:-3] + b"xx\n")
    with pytest.raises(AssertionError, match="torn on the secondary: \\[4\\]"):
        check_every_acknowledged_write_is_whole(workspace, [0, 4])
    with pytest.raises(AssertionError, match="lost: \\[6\\]"):
        check_every_acknowledged_write_is_whole(workspace, [6])  # slot 0 holds only record 2
