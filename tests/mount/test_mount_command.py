"""`tandem mount` as an operator uses it: in place, bad input, clean and busy unmounts."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tandem.fsdriver.mount import is_tandem_mount
from tandem.fsdriver.mutation import Unlink, Write, decode_json
from tests.conftest import Mounted, start_mount
from tests.helpers.mountproc import wait_for

pytestmark = [pytest.mark.root, pytest.mark.both_drivers]


def tandem(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tandem.engine.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _errors(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.strip()]


def test_missing_directory_is_one_clear_line(workspace: Path) -> None:
    done = tandem("mount", str(workspace / "nope"))
    assert done.returncode == 1
    assert _errors(done) == [f"tandem: error: {workspace / 'nope'} does not exist"]


def test_a_file_is_not_a_directory(workspace: Path) -> None:
    (workspace / "file").write_text("x")
    done = tandem("mount", str(workspace / "file"))
    assert done.returncode == 1
    [line] = _errors(done)
    assert line.startswith(f"tandem: error: {workspace / 'file'} is not a directory")


def test_mounting_twice_is_refused_and_the_first_mount_keeps_working(mounted: Mounted) -> None:
    done = tandem("mount", str(mounted.path))
    assert done.returncode == 1
    [line] = _errors(done)
    assert "is already a Tandem mount" in line
    (mounted.path / "still").write_text("works")
    assert (mounted.path / "still").read_text() == "works"


@pytest.mark.parametrize(
    "args",
    [
        ["mount"],
        ["mount", "/tmp", "--attr-timeout", "soon"],
        ["mount", "/tmp", "--entry-timeout", "-1"],
        ["frobnicate"],
    ],
)
def test_bad_arguments_exit_2_with_usage(args: list[str]) -> None:
    done = tandem(*args)
    assert done.returncode == 2
    assert "usage: tandem" in done.stderr


def test_in_place_content_before_during_and_after(workspace: Path) -> None:
    data = workspace / "data"
    data.mkdir()
    (data / "before").write_text("old")
    mount = start_mount(data)
    try:
        assert (data / "before").read_text() == "old"
        (data / "during").write_text("new")
    finally:
        mount.stop()
    assert not is_tandem_mount(str(data))
    assert sorted(os.listdir(data)) == ["before", "during"]
    assert (data / "during").read_text() == "new"


def test_busy_mount_is_detached_lazily_and_said_so(mounted: Mounted) -> None:
    holder = os.open(mounted.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        code = mounted.process.stop()
        assert code == 0
        assert "busy: detached lazily" in mounted.process.log()
        assert not is_tandem_mount(str(mounted.path))
        with pytest.raises(OSError) as raised:
            os.listdir(holder)
        assert raised.value.errno == errno.ENOTCONN
    finally:
        os.close(holder)


def test_external_unmount_ends_the_process_cleanly(mounted: Mounted) -> None:
    subprocess.run(["fusermount3", "-u", str(mounted.path)], check=True)
    process = mounted.process.process
    assert process is not None
    wait_for(lambda: process.poll() is not None, 20, "tandem mount to exit")
    assert process.returncode == 0
    assert "unmounted from outside" in mounted.process.log()


def test_sigint_unmounts_like_sigterm(mounted: Mounted) -> None:
    process = mounted.process.process
    assert process is not None
    process.send_signal(signal.SIGINT)
    assert process.wait(20) == 0
    assert not is_tandem_mount(str(mounted.path))


def test_write_returns_only_after_the_sink_has_it(mounted: Mounted) -> None:
    """No kernel write-back cache: when write(2) returns, the mutation is already recorded."""
    assert mounted.record is not None
    fd = os.open(mounted.path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for i in range(50):
            payload = b"%06d" % i
            assert os.pwrite(fd, payload, i * 6) == 6
            last = decode_json(mounted.record.read_text().splitlines()[-1])
            assert last == Write(b"f", i * 6, payload, last.stamps)
    finally:
        os.close(fd)


def test_hard_link_never_looked_up_still_receives_writes(workspace: Path) -> None:
    data = workspace / "data"
    data.mkdir()
    (data / "a").write_bytes(b"0123")
    os.link(data / "a", data / "b")  # "b" exists before the mount: never looked up through it
    mount = start_mount(data)
    try:
        fd = os.open(data / "a", os.O_WRONLY)
        try:
            os.unlink(data / "a")
            os.pwrite(fd, b"XY", 1)
        finally:
            os.close(fd)
        assert mount.record is not None
        stream = [decode_json(line) for line in mount.record.read_text().splitlines()]
    finally:
        mount.stop()
    assert isinstance(stream[0], Unlink) and stream[0].path == b"a"
    assert isinstance(stream[1], Write) and (stream[1].path, stream[1].data) == (b"b", b"XY")
    assert (data / "b").read_bytes() == b"0XY3"


def test_systemd_is_told_ready_and_stopping(workspace: Path) -> None:
    """Type=notify units rely on READY=1 once the mount serves, STOPPING=1 on the way out."""
    notify_path = workspace / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(20)
    data = workspace / "data"
    data.mkdir()
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "tandem.engine.cli", "mount", str(data)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert listener.recv(256) == b"READY=1"
        assert is_tandem_mount(str(data)), "READY=1 came before the mount served"
        process.send_signal(signal.SIGTERM)
        assert listener.recv(256) == b"STOPPING=1"
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        listener.close()
        if is_tandem_mount(str(data)):
            subprocess.run(["umount", "-l", str(data)], check=False)
