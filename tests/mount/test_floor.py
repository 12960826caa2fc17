"""The benchmarks' C floor (bench/floor_c/) builds here and is a faithful passthrough: a bench
that compares against a floor that silently fails would report nonsense."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tandem.bench import floor
from tandem.fsdriver.mount import mounts_at

pytestmark = pytest.mark.root


def test_the_c_floor_builds_mounts_passes_data_through_and_stops(workspace: Path) -> None:
    binary = floor.build(workspace)
    source, mountpoint = workspace / "source", workspace / "mnt"
    source.mkdir()
    mountpoint.mkdir()
    (source / "before").write_bytes(b"seen through")
    process = floor.mount(binary, source, mountpoint)
    try:
        assert (mountpoint / "before").read_bytes() == b"seen through"
        payload = os.urandom(300_000)
        (mountpoint / "d").mkdir()
        (mountpoint / "d" / "new").write_bytes(payload)
        os.rename(mountpoint / "d" / "new", mountpoint / "d" / "moved")
        assert (source / "d" / "moved").read_bytes() == payload
        (mountpoint / "before").unlink()
        assert sorted(os.listdir(mountpoint)) == ["d"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)  # libfuse's fuse_main exits 8 after a signal: the unmount is the test
    assert not mounts_at(str(mountpoint))
