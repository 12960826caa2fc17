"""A `tandem lab` driven through its command line, as a user would, torn down by `lab down`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "tandem.engine.cli"]


class LabCluster:
    def __init__(
        self,
        directory: Path,
        ack: str = "applied",
        timeout: float = 5.0,
        static: bool = True,
        disk_mib: int | None = None,
        sync: str = "write",
    ) -> None:
        self.directory = directory
        self.sync = sync
        self.static = static
        self.disk_mib = disk_mib
        self.ack = ack
        self.timeout = timeout
        self.path = directory / "app"  # the replicated directory, same path on both nodes

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*CLI, "lab", "--dir", str(self.directory), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check:
            assert done.returncode == 0, f"tandem lab {' '.join(args)}: {done.stderr}"
        return done

    def up(self) -> LabCluster:
        static = ["--static"] if self.static else []
        disk = ["--disk", str(self.disk_mib)] if self.disk_mib else []
        self.cli(
            "up", "--ack", self.ack, "--sync", self.sync, "--timeout", str(self.timeout),
            *static, *disk,
        )  # fmt: skip
        return self

    def down(self) -> None:
        if (self.directory / "lab.json").exists():
            self.cli("down")

    def on(self, node: str) -> list[str]:
        """The command prefix that runs a command on ``node``."""
        return [*CLI, "lab", "--dir", str(self.directory), "exec", node, "--"]

    def exec(self, node: str, *argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("timeout", 120)
        return subprocess.run([*self.on(node), *argv], capture_output=True, text=True, **kwargs)

    def popen(self, node: str, *argv: str, **kwargs: Any) -> subprocess.Popen[Any]:
        """A process on ``node``: it dies with the node, or with `stop_group`. (Killing the
        `lab exec` process alone would not reach the command: nsenter forks it.)"""
        return subprocess.Popen([*self.on(node), *argv], start_new_session=True, **kwargs)

    def kill(self, node: str) -> None:
        self.cli("kill", node)

    def start(self, node: str, *extra: str) -> None:
        self.cli("start", node, *extra)

    def cut(self, node: str) -> None:
        self.cli("cut", node)

    def heal(self, node: str) -> None:
        self.cli("heal", node)

    def copy(self, node: str) -> Path:
        """The node's own copy of the replicated directory, as seen from the host."""
        return self.directory / "nodes" / node / "data"

    def log(self, node: str) -> str:
        return (self.directory / "nodes" / node / "node.log").read_text(errors="replace")


def stop_group(process: subprocess.Popen[Any]) -> None:
    """Kill a process started by `LabCluster.popen`, with the command it runs on the node."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


@contextmanager
def failover_lab_of_its_own(prefix: str) -> Iterator[LabCluster]:
    """A failover lab in a scratch directory of its own (for a fixture wider than a test, which
    cannot use the per-test workspace), removed with everything in it."""
    workspace = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    workspace.chmod(0o755)
    cluster = LabCluster(workspace / "lab", static=False)
    try:
        yield cluster.up()
    finally:
        cluster.down()
        shutil.rmtree(workspace, ignore_errors=True)


def checked_lab(cluster: LabCluster) -> Iterator[LabCluster]:
    """The body of a lab fixture: up, then down whatever happened, and no traceback logged."""
    try:
        yield cluster.up()
        for node in ("a", "b"):
            assert "Traceback" not in cluster.log(node), cluster.log(node)
    finally:
        cluster.down()
