"""A GlusterFS replica 2 volume on this machine, for the benchmarks' comparison column: two
bricks (one per simulated server, both on this disk, like a `tandem lab` pair), served by
glusterd in a network namespace of its own (GlusterFS refuses loopback addresses for bricks;
tests and benches use only 198.18.0.0/15), mounted with its FUSE client where the benchmark
can reach it.

    with replica2(base) as mountpoint: ...   # None when glusterfs-server is not installed

Everything it starts is found again by its network namespace (every GlusterFS process it
starts lives there) and stopped by PID; glusterd keeps its state in a directory of the run's
own (its volfile's `working-directory`), so nothing of it outlives the run but its logs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

NAMESPACE = "tandem-bench-gluster"
ADDRESS = "198.18.7.1"
VOLUME = "tandembench"
SOCKET = "/var/run/glusterd.socket"  # where the gluster CLI finds glusterd


def installed() -> bool:
    return shutil.which("glusterd") is not None and shutil.which("gluster") is not None


def _run(*args: str, timeout: float = 60) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def _in_namespace(*args: str) -> list[str]:
    # nsenter joins only the network namespace: a mount made this way is visible on the host
    return ["nsenter", f"--net=/run/netns/{NAMESPACE}", *args]


def _namespace_inode() -> int:
    return os.stat(f"/run/netns/{NAMESPACE}").st_ino


def _processes_in_namespace(inode: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with suppress(OSError):
            if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                found.append(int(entry))
    return found


def _stop_everything_in_namespace() -> None:
    inode = _namespace_inode()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [pid for pid in _processes_in_namespace(inode) if pid != os.getpid()]
        if not pids:
            return
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _processes_in_namespace(inode):
            time.sleep(0.1)


_VOLFILE = """volume management
    type mgmt/glusterd
    option working-directory {state}
    option transport-type socket
    option transport.socket.listen-port 24007
    option ping-timeout 0
    option event-threads 1
end-volume
"""


def _glusterd(state: Path) -> None:
    volfile = state / "glusterd.vol"
    volfile.write_text(_VOLFILE.format(state=state))
    _run(*_in_namespace("glusterd", "-f", str(volfile), "-p", str(state / "glusterd.pid")))
    deadline = time.monotonic() + 30
    while True:
        done = subprocess.run(
            _in_namespace("gluster", "--mode=script", "volume", "list"),
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"glusterd did not answer: {done.stderr.strip()}")
        time.sleep(0.3)


@contextmanager
def replica2(base: Path) -> Iterator[Path | None]:
    """A mounted replica 2 volume under ``base`` (bricks, state, mountpoint), or None when
    GlusterFS is not installed; everything is gone again afterwards."""
    if not installed():
        yield None
        return
    if Path("/run/netns", NAMESPACE).exists():
        raise RuntimeError(f"network namespace {NAMESPACE} exists: another bench is running?")
    if Path(SOCKET).exists():
        raise RuntimeError(f"{SOCKET} exists: a glusterd runs on this machine already")
    state, bricks, mountpoint = base / "glusterd", base / "bricks", base / "gluster-mount"
    for directory in (state, bricks, mountpoint):
        directory.mkdir(parents=True)
    _run("ip", "netns", "add", NAMESPACE)
    mounted = daemon = False
    try:
        _run("ip", "-n", NAMESPACE, "link", "set", "lo", "up")
        # on the namespace's own loopback device: this kernel has no dummy links
        _run("ip", "-n", NAMESPACE, "addr", "add", f"{ADDRESS}/32", "dev", "lo")
        daemon = True  # from here on the socket, if any, is our daemon's
        _glusterd(state)
        _run(
            *_in_namespace(
                "gluster", "--mode=script", "volume", "create", VOLUME, "replica", "2",
                f"{ADDRESS}:{bricks}/1", f"{ADDRESS}:{bricks}/2", "force",
            )
        )  # fmt: skip
        _run(*_in_namespace("gluster", "--mode=script", "volume", "start", VOLUME))
        _run(*_in_namespace("mount", "-t", "glusterfs", f"{ADDRESS}:/{VOLUME}", str(mountpoint)))
        mounted = True
        mountpoint.chmod(0o777)
        yield mountpoint
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
        _stop_everything_in_namespace()
        if daemon:
            Path(SOCKET).unlink(missing_ok=True)
        subprocess.run(["ip", "netns", "delete", NAMESPACE], capture_output=True)
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(bricks, ignore_errors=True)
