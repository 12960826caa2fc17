"""The C floor: builds and mounts `bench/floor_c/passthrough_floor.c`, a minimal multi-threaded
C passthrough (no replication, no writeback cache), so that a benchmark can measure what FUSE
itself costs on this machine in the same run as Tandem's drivers."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from tandem.fsdriver.mount import mounts_at

SOURCE = Path(__file__).parent / "floor_c" / "passthrough_floor.c"


class FloorUnavailable(RuntimeError):
    """No compiler or no libfuse3 headers: the floor cannot be built here."""


def build(directory: Path) -> Path:
    """Compile the floor into ``directory``; returns the binary."""
    if shutil.which("gcc") is None or shutil.which("pkg-config") is None:
        raise FloorUnavailable("gcc and pkg-config are needed to build the C floor")
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True
    )
    if flags.returncode != 0:
        raise FloorUnavailable("libfuse3-dev is needed to build the C floor")
    binary = directory / "passthrough_floor"
    done = subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(binary), str(SOURCE), *flags.stdout.split()],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise FloorUnavailable(f"the C floor does not compile: {done.stderr.strip()}")
    return binary


def mount(binary: Path, source: Path, mountpoint: Path) -> subprocess.Popen[bytes]:
    """Serve ``source`` at ``mountpoint`` in the foreground until SIGTERM."""
    process = subprocess.Popen(
        [str(binary), str(source), str(mountpoint), "-f", "-o", "allow_other,default_permissions"],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not mounts_at(str(mountpoint)):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the C floor did not mount")
        time.sleep(0.05)
    return process
