"""File-system exercisers on the mount: an fsx-style model checker (writes, truncates, mmap
reads and writes checked against an in-memory model) and dbench (a file-server load). After
each, the recorded mutation stream must rebuild the same files on a copy."""

from __future__ import annotations

import mmap
import os
import random
import subprocess
from pathlib import Path

import pytest

from tandem.engine.replica.replay import replay_recording
from tests.conftest import Mounted
from tests.helpers.treediff import diff, snapshot

pytestmark = [pytest.mark.root, pytest.mark.both_drivers]

MAX_SIZE = 256 * 1024


def _replayed(mounted: Mounted, replica: Path) -> Path:
    assert mounted.record is not None
    replica.mkdir()
    replay_recording(mounted.record.read_text().splitlines(), replica)
    return replica


def _fsx(path: Path, seed: int, operations: int) -> list[str]:
    """Like fsx: random I/O through several paths into one file, every read checked."""
    rng = random.Random(seed)
    model = bytearray()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    log: list[str] = []
    try:
        for step in range(operations):
            kind = rng.choice(
                ["write", "write", "read", "truncate", "mapwrite", "mapread", "fsync", "reopen"]
            )
            offset = rng.randrange(0, MAX_SIZE)
            length = rng.randrange(1, 16 * 1024)
            log.append(f"{step} {kind} {offset} {length}")
            if kind == "write":
                data = rng.randbytes(length)
                os.pwrite(fd, data, offset)
                if len(model) < offset:
                    model.extend(bytes(offset - len(model)))
                model[offset : offset + length] = data
            elif kind == "truncate":
                os.ftruncate(fd, offset)
                del model[offset:]
                model.extend(bytes(offset - len(model)))
            elif kind == "read":
                got = os.pread(fd, length, offset)
                assert got == bytes(model[offset : offset + length]), (
                    f"read mismatch at step {step}"
                )
            elif kind in ("mapwrite", "mapread") and len(model) > 0:
                offset %= len(model)
                length = min(length, len(model) - offset)
                with mmap.mmap(fd, len(model)) as mapped:
                    if kind == "mapwrite":
                        data = rng.randbytes(length)
                        mapped[offset : offset + length] = data
                        model[offset : offset + length] = data
                        mapped.flush()
                    else:
                        assert mapped[offset : offset + length] == bytes(
                            model[offset : offset + length]
                        ), f"mmap read mismatch at step {step}"
            elif kind == "fsync":
                os.fsync(fd)
            elif kind == "reopen":
                os.close(fd)
                fd = os.open(path, os.O_RDWR)
            assert os.fstat(fd).st_size == len(model), f"size mismatch at step {step}"
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(model)
    return log


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fsx_style_exerciser(workspace: Path, mounted: Mounted, seed: int) -> None:
    _fsx(mounted.path / "fsx.bin", seed, operations=1500)
    # the plain directory gives the same file for the same sequence
    plain = workspace / "plain"
    plain.mkdir()
    _fsx(plain / "fsx.bin", seed, operations=1500)
    assert (plain / "fsx.bin").read_bytes() == (mounted.path / "fsx.bin").read_bytes()
    live = snapshot(str(mounted.path), times=True)
    mounted.stop()
    assert diff(live, snapshot(str(_replayed(mounted, workspace / "replica")), times=True)) == []


def test_dbench_file_server_load(workspace: Path, mounted: Mounted) -> None:
    done = subprocess.run(
        ["dbench", "-D", str(mounted.path), "-t", "8", "--skip-cleanup", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert "Throughput" in done.stdout
    # dbench's own start barrier between its client processes (a SysV semaphore) is not the
    # filesystem's business: when it cannot have one it says so and starts them anyway
    output = (done.stdout + done.stderr).replace("failed to create barrier semaphore", "")
    for marker in ("ERROR", "failed", "Failed"):
        assert marker not in output, done.stdout[-2000:]
    live = snapshot(str(mounted.path), times=True)
    mounted.stop()
    assert diff(live, snapshot(str(_replayed(mounted, workspace / "replica")), times=True)) == []
