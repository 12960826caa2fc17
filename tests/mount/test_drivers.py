"""Choosing the FUSE driver (TANDEM_FSDRIVER), and what the native data plane answers in C.

The rest of tests/mount runs on both drivers (README's test command runs the `both_drivers`
tests a second time with TANDEM_FSDRIVER=native); here is what only one driver can show."""

from __future__ import annotations

import mmap
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tandem.fsdriver.driver import ENVIRONMENT_VARIABLE, native_built
from tandem.fsdriver.mount import is_tandem_mount
from tests.conftest import start_mount

pytestmark = pytest.mark.root

COUNTS = re.compile(
    r"data plane: (\d+) reads, (\d+) flushes, \d+ seeks and (\d+) capability probes "
    r"answered in C; "
    r"(\d+) requests handed to Python, (\d+) answered"
)


def _mount_with(directory: Path, driver: str, before: str = "") -> subprocess.CompletedProcess:
    """`tandem mount` with ``driver`` asked for; ``before`` runs first in the same process."""
    code = (
        "import sys\n"
        f"{before}\n"
        "from tandem.engine.cli.main import main\n"
        f"sys.argv = ['tandem', 'mount', {str(directory)!r}]\n"
        "sys.exit(main())\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, ENVIRONMENT_VARIABLE: driver},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_an_unknown_driver_is_refused_in_one_line_and_nothing_is_mounted(
    workspace: Path,
) -> None:
    directory = workspace / "mnt"
    directory.mkdir()
    done = _mount_with(directory, "rust")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert ENVIRONMENT_VARIABLE in lines[0] and "python, native" in lines[0]
    assert not is_tandem_mount(str(directory))


def test_the_native_driver_missing_is_an_error_never_the_python_one_instead(
    workspace: Path,
) -> None:
    directory = workspace / "mnt"
    directory.mkdir()
    # as if the extension had not been built: its import fails
    done = _mount_with(directory, "native", "sys.modules['tandem.native._dataplane'] = None")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "native data plane is not built" in lines[0]
    assert not is_tandem_mount(str(directory))


def test_the_native_data_plane_is_built_here() -> None:
    # CI installs with a compiler and libfuse3-dev: the second pass must really run C
    assert native_built()


def _read_direct(path: Path, size: int) -> bytes:
    """Read with O_DIRECT (an aligned buffer) so that every read reaches the file system."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buffer = mmap.mmap(-1, size)
        done = os.preadv(fd, [buffer], 0)
        return bytes(buffer[:done])
    finally:
        os.close(fd)


def test_the_native_driver_answers_reads_and_the_capability_probe_in_c(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "native")
    mount = start_mount(workspace / "mnt")
    payload = os.urandom(64 * 4096)
    target = mount.path / "data.bin"
    try:
        with open(target, "wb") as out:
            for start in range(0, len(payload), 4096):
                out.write(payload[start : start + 4096])
                out.flush()  # one write(2), and one capability probe, per block
        assert _read_direct(target, len(payload)) == payload
    finally:
        mount.stop()
    log = mount.process.log()
    assert "(native driver)" in log
    found = COUNTS.search(log)
    assert found, log
    reads, flushes, probes, handed, answered = (int(g) for g in found.groups())
    assert reads >= 1  # the direct read came to C
    # the first probe went to Python, which found no capability; the other 63 stayed in C
    assert probes >= 60
    assert flushes >= 1  # close(2) sends one FLUSH, answered ENOSYS in C
    assert handed == answered  # every request handed to Python was answered
    assert (workspace / "mnt" / "data.bin").read_bytes() == payload


def test_the_native_driver_forgets_a_capability_it_was_told_of(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file given a capability through the mount must be probed again: a write by an
    unprivileged process then removes it, as on the plain file system."""
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "native")
    mount = start_mount(workspace / "mnt")
    target = mount.path / "tool"
    try:
        target.write_bytes(b"#!/bin/sh\n")
        target.chmod(0o777)
        with open(target, "ab") as out:
            out.write(b"echo one\n")  # probed: absent, remembered in C
        capability = bytes.fromhex("0100000200100000000000000000000000000000")  # cap_net_raw
        os.setxattr(target, "security.capability", capability)
        assert os.getxattr(target, "security.capability") == capability
        subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             "sh", "-c", f"echo two >> {target}"],
            check=True,
        )  # fmt: skip
        with pytest.raises(OSError):
            os.getxattr(target, "security.capability")
    finally:
        mount.stop()
