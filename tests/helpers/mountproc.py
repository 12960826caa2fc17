"""A real `tandem mount` in a child process, with a teardown that cannot leave a mount behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tandem.fsdriver.mount import is_tandem_mount, release_leftovers, unmount

FUSECTL = "/sys/fs/fuse/connections"


def ensure_fusectl() -> None:
    if not os.path.exists(os.path.join(FUSECTL, ".")) or not os.listdir(FUSECTL):
        subprocess.run(
            ["mount", "-t", "fusectl", "none", FUSECTL], check=False, capture_output=True
        )


def wait_for(condition, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class MountProcess:
    directory: Path
    record: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(self) -> MountProcess:
        ensure_fusectl()
        args = [
            sys.executable,
            "-m",
            "tandem.engine.cli",
            "mount",
            str(self.directory),
            *self.extra_args,
        ]
        if self.record is not None:
            args += ["--record", str(self.record)]
        self.log_path = self.directory.parent / f".{self.directory.name}.mount.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"tandem mount exited with {self.process.returncode}: {self.log()}"
                )
            return is_tandem_mount(str(self.directory))

        wait_for(ready, 20, f"the mount on {self.directory}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def connection_id(self) -> int | None:
        try:
            return os.minor(os.stat(self.directory).st_dev)
        except OSError:
            return None

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM and wait; abort the connection and kill by PID if that does not work."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        hung = False
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                hung = True
                self._abort(process)
        if is_tandem_mount(str(self.directory)):
            unmount(str(self.directory))
        # a busy unmount leaves a fence over the path (fail closed): a test must not
        release_leftovers(str(self.directory))
        if hung:
            raise AssertionError(f"tandem mount did not stop on SIGTERM; log:\n{self.log()}")
        return process.returncode

    def _abort(self, process: subprocess.Popen[bytes]) -> None:
        with open("/proc/self/mountinfo") as table:
            devices = [
                line.split()[2]
                for line in table
                if f" {self.directory} " in line and "fuse.tandem" in line
            ]
        for device in devices:
            abort = os.path.join(FUSECTL, device.split(":")[1], "abort")
            if os.path.exists(abort):
                with open(abort, "w") as handle:
                    handle.write("1")
        process.kill()
        process.wait(10)
