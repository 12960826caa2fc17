"""A primary (`tandem mount --replicate-to`) and a secondary (`tandem receive`) as real
processes on loopback, each with its own directory, torn down by PID."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tandem.fsdriver.mount import is_tandem_mount, mounts_at
from tests.helpers.mountproc import ensure_fusectl, wait_for

SECRET = b"tandem-test-secret-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def write_secret(path: Path, secret: bytes = SECRET) -> Path:
    path.write_bytes(secret)
    path.chmod(0o600)
    return path


@dataclass
class Node:
    directory: Path
    args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Node:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tandem.engine.cli", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_log(self, text: str, timeout: float = 20) -> None:
        def seen() -> bool:
            if text in self.log():
                return True
            if not self.alive():
                raise AssertionError(f"process exited before logging {text!r}:\n{self.log()}")
            return False

        wait_for(seen, timeout, f"{text!r} in {self.log_path.name}")

    def signal(self, signum: int) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        # a crashed primary leaves a dead FUSE mount; a crashed secondary its read-only bind
        while mounts_at(str(self.directory)):
            subprocess.run(["umount", "-l", str(self.directory)], check=False)


@dataclass
class Pair:
    base: Path
    port: int = field(default_factory=free_port)
    extra: list[str] = field(default_factory=list)
    primary: Node | None = None
    secondary: Node | None = None

    def __post_init__(self) -> None:
        ensure_fusectl()
        (self.base / "a").mkdir(exist_ok=True)
        (self.base / "b").mkdir(exist_ok=True)
        self.secret = write_secret(self.base / "secret")

    @property
    def a(self) -> Path:
        return self.base / "a"

    @property
    def b(self) -> Path:
        return self.base / "b"

    def start_secondary(self, *extra: str) -> Node:
        args = ["receive", str(self.b), "--listen", f"127.0.0.1:{self.port}"]
        args += ["--secret-file", str(self.secret), "--node", "b", *self.extra, *extra]
        self.secondary = Node(self.b, args, self.base / "b.log").start()
        self.secondary.wait_log("waiting for the primary")
        return self.secondary

    def start_primary(self, *extra: str, expect_peer: bool = True, via: int | None = None) -> Node:
        """The mount, replicating to the secondary (or to a relay listening on port `via`)."""
        args = ["mount", str(self.a), "--replicate-to", f"127.0.0.1:{via or self.port}"]
        args += ["--secret-file", str(self.secret), "--node", "a", *self.extra, *extra]
        self.primary = Node(self.a, args, self.base / "a.log").start()
        wait_for(lambda: self._mounted_or_dead(), 20, "the primary's mount")
        if expect_peer:
            self.primary.wait_log("replicating")
        return self.primary

    def _mounted_or_dead(self) -> bool:
        assert self.primary is not None
        if not self.primary.alive():
            raise AssertionError(f"primary exited:\n{self.primary.log()}")
        return is_tandem_mount(str(self.a))

    def stop(self) -> None:
        for node in (self.primary, self.secondary):
            if node is not None:
                node.stop()


WRITE_AND_SYNC = (
    "import os, sys\n"
    "try:\n"
    "    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)\n"
    "    os.write(fd, b'x' * 4096); os.fsync(fd); print('acknowledged')\n"
    "except OSError as exc:\n"
    "    print(exc.strerror)\n"
)


def write_and_sync(path: Path) -> subprocess.Popen[str]:
    """4 KiB written to ``path`` and fsync'd, in a process of its own: it prints
    "acknowledged", or the error's text ("Input/output error")."""
    return subprocess.Popen(
        [sys.executable, "-c", WRITE_AND_SYNC, str(path)], stdout=subprocess.PIPE, text=True
    )


FAKE_PEER = str(Path(__file__).parent / "fakepeer.py")


def fake_secondary(pair: Pair, mode: str) -> subprocess.Popen[str]:
    """A misbehaving secondary (`fakepeer.py` MODE) listening on the pair's port."""
    fake = subprocess.Popen(
        [sys.executable, FAKE_PEER, mode, "127.0.0.1", str(pair.port), str(pair.secret)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert fake.stdout is not None
    assert fake.stdout.readline().strip() == "listening"
    return fake
