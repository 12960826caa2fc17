"""The node process (`tandem node`) on loopback: a module with two directories replicates each
one, the secondary's copies are read-only while it runs and writable again after, systemd hears
READY=1 and STOPPING=1, and a mount process that dies takes the node down with the reason."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tandem.fsdriver.mount import is_tandem_mount, mounts_at
from tests.helpers.mountproc import ensure_fusectl, wait_for
from tests.helpers.pair import free_port, write_secret

pytestmark = pytest.mark.root

CLI = [sys.executable, "-m", "tandem.engine.cli"]


def _config(base: Path, node: str, directories: list[Path], port: int) -> Path:
    config = base / f"etc-{node}"
    (config / "modules").mkdir(parents=True)
    write_secret(config / "secret")
    listed = ", ".join(f'"{d}"' for d in directories)
    (config / "modules" / "web.toml").write_text(
        f"directories = [{listed}]\nport = {port}\ntimeout = 2\n"
        '[nodes]\na = "127.0.0.1"\nb = "127.0.0.2"\n'
    )
    return config


def _node(config: Path, node: str, role: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    # both nodes share this loopback, and so would their API's port: the API has its own tests
    command = [*CLI, "node", "--config-dir", str(config), "--node", node, f"web={role}"]
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*command, "--api", "none"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )


@pytest.fixture
def processes() -> Iterator[list[tuple[subprocess.Popen[bytes], list[Path]]]]:
    started: list[tuple[subprocess.Popen[bytes], list[Path]]] = []
    ensure_fusectl()
    try:
        yield started
    finally:
        for process, directories in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            for directory in directories:
                while mounts_at(str(directory)):
                    subprocess.run(["umount", "-l", str(directory)], check=False)


def test_a_two_directory_module_replicates_each_and_stops_cleanly(
    workspace: Path, processes: list[tuple[subprocess.Popen[bytes], list[Path]]]
) -> None:
    port = free_port()
    primary_dirs = [workspace / "a" / "data", workspace / "a" / "logs"]
    secondary_dirs = [workspace / "b" / "data", workspace / "b" / "logs"]
    for directory in primary_dirs + secondary_dirs:
        directory.mkdir(parents=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(workspace / "notify"))
    notify.settimeout(30)
    try:
        b_log, a_log = workspace / "b.log", workspace / "a.log"
        b_config = _config(workspace, "b", secondary_dirs, port)
        secondary = _node(b_config, "b", "secondary", b_log)
        processes.append((secondary, secondary_dirs))
        wait_for(lambda: "node b ready" in b_log.read_text(), 20, "node b")
        a_config = _config(workspace, "a", primary_dirs, port)
        primary = _node(
            a_config,
            "a",
            "primary",
            a_log,
            NOTIFY_SOCKET=str(workspace / "notify"),
            WATCHDOG_USEC="400000",  # WatchdogSec=0.4: pinged every 0.2 s
        )
        processes.append((primary, primary_dirs))

        assert notify.recv(64) == b"READY=1"
        assert all(is_tandem_mount(str(d)) for d in primary_dirs), "READY before every mount"
        wait_for(lambda: a_log.read_text().count("replicating web/") == 2, 20, "both streams")
        for index, directory in enumerate(primary_dirs):
            (directory / "file").write_text(f"directory {index}\n")
        for index, directory in enumerate(secondary_dirs):
            assert (directory / "file").read_text() == f"directory {index}\n"
            with pytest.raises(OSError, match="Read-only file system"):
                (directory / "diverge").write_text("no")

        time.sleep(0.7)  # three watchdog intervals
        primary.send_signal(signal.SIGTERM)
        said = []
        while not said or said[-1] != b"STOPPING=1":
            said.append(notify.recv(64))
        assert set(said) == {b"WATCHDOG=1", b"STOPPING=1"}
        assert said.count(b"WATCHDOG=1") >= 2  # fed all along, from the node's loop
        assert primary.wait(30) == 0
        assert not any(is_tandem_mount(str(d)) for d in primary_dirs)
        secondary.send_signal(signal.SIGTERM)
        assert secondary.wait(30) == 0
        assert not any(mounts_at(str(d)) for d in secondary_dirs)  # writable again
        assert "Traceback" not in a_log.read_text() + b_log.read_text()
    finally:
        notify.close()


def test_a_dead_mount_process_stops_the_node_with_the_reason(
    workspace: Path, processes: list[tuple[subprocess.Popen[bytes], list[Path]]]
) -> None:
    data = workspace / "data"
    data.mkdir()
    log = workspace / "a.log"
    node = _node(_config(workspace, "a", [data], free_port()), "a", "primary", log)
    processes.append((node, [data]))
    wait_for(lambda: "node a ready" in log.read_text(), 20, "node a")
    # trio starts children from a worker thread: look under every thread of the node
    children = [
        pid
        for task in Path(f"/proc/{node.pid}/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]
    assert len(children) == 1
    os.kill(int(children[0]), signal.SIGKILL)
    assert node.wait(30) == 1
    assert f"the mount of {data} ended unexpectedly (exit code -9)" in log.read_text()
