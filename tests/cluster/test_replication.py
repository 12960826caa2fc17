"""Synchronous replication between two real node processes (loopback): copies stay identical,
no acknowledged write is lost when the primary is killed, and a bad or silent peer never hangs
or corrupts the primary."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import NOBODY, run_ops
from tests.helpers.mountproc import wait_for
from tests.helpers.pair import Pair, write_secret
from tests.helpers.treediff import diff, snapshot

pytestmark = [pytest.mark.root, pytest.mark.both_drivers]


@pytest.fixture
def pair(workspace: Path) -> Iterator[Pair]:
    cluster = Pair(workspace)
    try:
        yield cluster
    finally:
        cluster.stop()


WORKLOAD = [
    ["mkdir", "d", 0o755],
    ["write", "d/f", 0, "hello", []],
    ["write", "d/f", 1 << 20, "sparse tail", []],
    ["write", "d/log", 0, "line\n", ["O_APPEND"]],
    ["write", "d/log", 0, "line\n", ["O_APPEND"]],
    ["link", "d/f", "hard"],
    ["symlink", "d/f", "soft"],
    ["rename", "d/log", "d/log.1", "replace"],
    ["setxattr", "d/f", "user.k", "v", 0],
    ["chmod", "d/f", 0o640],
    ["mknod", "fifo", "fifo", 0o600],
    ["truncate", "hard", 3000],
    ["utime", "soft", 7, 8],
    ["mmap_write", "d/f", 10, "mapped"],
    ["fsync", "d/f"],
    ["unlink", "hard"],
]


@pytest.mark.parametrize("ack", ["applied", "durable"])
def test_copies_are_identical_after_a_workload(pair: Pair, ack: str) -> None:
    pair.start_secondary("--ack", ack)
    pair.start_primary("--ack", ack)
    os.chown(pair.a, *NOBODY)
    results = run_ops(pair.a, WORKLOAD, NOBODY)
    assert all(r[0] == "ok" for r in results), results
    assert diff(snapshot(str(pair.a), times=True), snapshot(str(pair.b), times=True)) == []
    assert "WARNING" not in pair.primary.log() + pair.secondary.log()  # type: ignore[union-attr]


def test_the_secondary_copy_is_read_only_to_applications(pair: Pair) -> None:
    pair.start_secondary()
    pair.start_primary()
    (pair.a / "f").write_text("x")
    with pytest.raises(OSError, match="Read-only"):
        (pair.b / "g").write_text("diverge")
    assert (pair.b / "f").read_text() == "x"


WRITER = r"""
import os, sys
data, log = sys.argv[1], sys.argv[2]
flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
fds = [os.open(os.path.join(data, f"f{n}"), flags, 0o644) for n in range(4)]
with open(log, "a", buffering=1) as acknowledged:
    for i in range(10**9):
        try:
            os.write(fds[i % 4], b"record-%08d\n" % i)
        except OSError:
            break
        acknowledged.write(f"{i}\n")   # only after write(2) returned
"""


@pytest.mark.parametrize("attempt", range(4))
def test_no_acknowledged_write_is_lost_when_the_primary_is_killed(
    workspace: Path, attempt: int
) -> None:
    pair = Pair(workspace)
    writer = None
    try:
        pair.start_secondary()
        pair.start_primary()
        acknowledged = workspace / "acknowledged.log"
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(pair.a), str(acknowledged)])
        wait_for(lambda: acknowledged.exists() and acknowledged.stat().st_size > 0, 20, "writes")
        time.sleep(random.uniform(0.1, 1.0))
        pair.primary.signal(signal.SIGKILL)  # type: ignore[union-attr]
        writer.wait(30)
        confirmed = [int(line) for line in acknowledged.read_text().split()]
        assert confirmed, "the writer never got an acknowledgement"
        on_secondary: dict[int, list[bytes]] = {}
        for n in range(4):
            content = (pair.b / f"f{n}").read_bytes()
            assert content.endswith(b"\n") or not content, f"f{n} ends with a torn record"
            on_secondary[n] = content.split(b"\n")[:-1]
        present = {int(rec[len(b"record-") :]) for lines in on_secondary.values() for rec in lines}
        missing = [i for i in confirmed if i not in present]
        assert not missing, f"{len(missing)} acknowledged writes lost, first {missing[:5]}"
        print(f"{len(confirmed)} acknowledged, {len(present)} on the secondary")
        for n, lines in on_secondary.items():  # in order, no holes, per file
            numbers = [int(rec[len(b"record-") :]) for rec in lines]
            assert numbers == list(range(n, n + 4 * len(numbers), 4))
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait()
        pair.stop()


def test_wrong_secret_replicates_nothing_and_the_primary_goes_on(workspace: Path) -> None:
    pair = Pair(workspace)
    try:
        pair.start_secondary()
        other = write_secret(workspace / "other-secret", b"not-the-cluster-secret-at-all")
        node = pair.start_primary("--secret-file", str(other), expect_peer=False)
        node.wait_log("retrying every")
        assert "failed authentication" in node.log() + pair.secondary.log()  # type: ignore[union-attr]
        (pair.a / "f").write_text("local only")
        assert (pair.a / "f").read_text() == "local only"
        assert not (pair.b / "f").exists()
    finally:
        pair.stop()


def test_a_silent_secondary_does_not_hang_writers(pair: Pair) -> None:
    pair.start_secondary()
    pair.start_primary("--timeout", "2")
    (pair.a / "before").write_text("mirrored")
    pair.secondary.signal(signal.SIGSTOP)  # type: ignore[union-attr]
    started = time.monotonic()
    (pair.a / "during").write_text("written while the peer is frozen")
    assert time.monotonic() - started < 10
    pair.primary.wait_log("did not acknowledge within 2 s")  # type: ignore[union-attr]
    (pair.a / "after").write_text("alone")
    assert (pair.a / "after").read_text() == "alone"
    assert (pair.b / "before").read_text() == "mirrored"


def test_an_unreachable_secondary_at_start_means_alone_until_it_comes(pair: Pair) -> None:
    node = pair.start_primary("--timeout", "2", "--retry", "0.2", expect_peer=False)
    node.wait_log("retrying every")
    (pair.a / "f").write_text("ok")
    assert (pair.a / "f").read_text() == "ok"
    pair.start_secondary()
    node.wait_log("replicating")  # connected, compared (no journal: everything), in sync
    assert (pair.b / "f").read_text() == "ok"


def test_a_full_secondary_disk_loses_nothing_on_the_primary(pair: Pair) -> None:
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tandem-test", str(pair.b)], check=True
    )
    try:
        pair.start_secondary()
        pair.start_primary()
        payload = os.urandom(3 << 20)
        (pair.a / "big").write_bytes(payload)  # larger than the secondary's disk
        pair.primary.wait_log("going on alone")  # type: ignore[union-attr]
        assert "ENOSPC" in pair.primary.log() + pair.secondary.log()  # type: ignore[union-attr]
        assert (pair.a / "big").read_bytes() == payload
        (pair.a / "next").write_text("still writable")
    finally:
        pair.stop()
        subprocess.run(["umount", "-l", str(pair.b)], check=False)


def test_bad_secret_files_are_refused_clearly(workspace: Path) -> None:
    loose = workspace / "loose"
    loose.write_bytes(b"x" * 32)
    loose.chmod(0o644)
    short = write_secret(workspace / "short", b"abc")
    for secret, message in [
        (loose, "open to group or others"),
        (short, "at least 16"),
        (workspace / "none", "cannot read"),
    ]:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tandem.engine.cli",
                "receive",
                str(workspace),
                "--listen",
                "127.0.0.1:1",
                "--secret-file",
                str(secret),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 1
        assert message in done.stderr, done.stderr
