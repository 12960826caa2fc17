"""Mounting the passthrough over a directory, in place, and taking it down cleanly."""

from __future__ import annotations

import errno
import logging
import os
import resource
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyfuse3
import trio

from tandem.fsdriver.change import NO_RECORDER, ChangeRecorder
from tandem.fsdriver.driver import DriverUnavailable, chosen_driver
from tandem.fsdriver.fence import FENCE_TYPE, fence, is_dead
from tandem.fsdriver.fence import remove as remove_fence
from tandem.fsdriver.mutation import ReplicationSink
from tandem.fsdriver.native_session import NativeSession
from tandem.fsdriver.ops import Passthrough
from tandem.fsdriver.syscall import MNT_DETACH, umount2

log = logging.getLogger(__name__)

FS_TYPE = "fuse.tandem"


class MountError(Exception):
    """A directory cannot be mounted over; the message is meant for the operator."""


@dataclass(frozen=True)
class MountOptions:
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    max_tasks: int = 128


def unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \\ooo octal
    out, i = [], 0
    while i < len(field):
        octal = field[i + 1 : i + 4]
        if field[i] == "\\" and len(octal) == 3 and octal.isdigit():
            out.append(chr(int(octal, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_at(path: str) -> list[str]:
    """File system types mounted exactly at ``path``, innermost last."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            left, _, right = line.partition(" - ")
            if unescape_mountinfo(left.split()[4]) == path:
                found.append(right.split()[0])
    return found


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    parent_id: int
    device: str  # major:minor
    root: str  # the directory of its filesystem that the mount shows
    point: str
    options: frozenset[str]
    fs_type: str


def mount_table() -> list[MountEntry]:
    """This process's mounts, in /proc/self/mountinfo order (a later one is on top)."""
    entries = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            left, _, right = line.partition(" - ")
            fields = left.split()
            entries.append(
                MountEntry(
                    int(fields[0]),
                    int(fields[1]),
                    fields[2],
                    unescape_mountinfo(fields[3]),
                    unescape_mountinfo(fields[4]),
                    frozenset(fields[5].split(",")),
                    right.split()[0],
                )
            )
    return entries


def is_read_only_self_bind(path: str) -> bool:
    """The top mount at ``path`` is a read-only bind of ``path`` over itself: what a
    secondary puts there (`read_only_in_place`), and leaves behind when it is killed."""
    table = mount_table()
    on_path = [entry for entry in table if entry.point == path]
    if not on_path or "ro" not in on_path[-1].options:
        return False
    top = on_path[-1]
    below = next((entry for entry in table if entry.mount_id == top.parent_id), None)
    if below is None or below.device != top.device or below.fs_type != top.fs_type:
        return False
    covered = os.path.join(below.root, os.path.relpath(path, below.point))
    return os.path.normpath(covered) == os.path.normpath(top.root)


def is_tandem_mount(path: str) -> bool:
    types = mounts_at(path)
    return bool(types) and types[-1] == FS_TYPE


def release_leftovers(path: str) -> list[str]:
    """Take away what a failed run left over ``path``: a fence, or a Tandem mount whose process
    died (both answer ENOTCONN), or the read-only bind of a secondary that was killed (the copy
    would stay read-only: a restarted secondary could apply nothing, EROFS, and a primary
    mounted over it would refuse every write). A live Tandem mount is never touched. Says
    what it removed."""
    removed: list[str] = []
    while True:
        if mounts_at(path) and mounts_at(path)[-1] in (FS_TYPE, FENCE_TYPE) and is_dead(path):
            kind = "fence" if mounts_at(path)[-1] == FENCE_TYPE else "dead mount"
            remove_fence(path)
        elif is_read_only_self_bind(path):
            kind = "read-only bind"
            try:
                umount2(path, 0)
            except OSError:
                umount2(path, MNT_DETACH)  # read through: it writes nothing
        else:
            return removed
        removed.append(kind)
        log.info("%s: removed the %s a failed run left", path, kind)


def check_target(directory: str) -> str:
    """The absolute path to mount over, or MountError saying why not. What a failed run left
    there (a fence, a dead mount) is taken away first: the module starts its copy again."""
    path = os.path.abspath(directory)
    release_leftovers(path)
    if is_tandem_mount(path):
        raise MountError(
            f"{path} is already a Tandem mount (if no tandem process serves it, "
            f"release it with: fusermount3 -u -z {path})"
        )
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MountError(f"{path} does not exist") from None
    except OSError as exc:
        raise MountError(f"{path} cannot be used: {exc.strerror}") from None
    if not os.path.isdir(path):
        raise MountError(f"{path} is not a directory (mode {oct(st.st_mode)})")
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: load the fuse module (modprobe fuse)")
    return os.path.realpath(path)


def unmount(path: str) -> str:
    """Unmount ``path``. When it is busy it is detached lazily and fenced at once: the next
    open through the path must fail, never reach the bare copy. Returns what happened."""
    try:
        umount2(path, 0)
        return "unmounted"
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            umount2(path, MNT_DETACH)
            fence(path)
            return (
                "busy: detached lazily and fenced (the path fails every access until the "
                "module starts its copy again)"
            )
        if exc.errno in (errno.EINVAL, errno.ENOENT):
            return "already unmounted"
        raise


def notify_systemd(message: bytes) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message, address)


@contextmanager
def open_root(path: str) -> Iterator[int]:
    """The directory's own fd, taken before the mount hides it: all backing I/O goes through it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


Companion = Callable[[], Awaitable[None]]


async def _serve(
    path: str,
    options: MountOptions,
    companion: Companion | None,
    native: NativeSession | None,
) -> None:
    async with trio.open_nursery() as nursery:
        if companion is not None:
            # e.g. the replicator's connection: it shares the trio loop with the handlers
            nursery.start_soon(companion, name="companion")

        async def stop_on_signal(task_status: trio.TaskStatus[None]) -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                task_status.started()
                async for signum in signals:
                    log.info("received %s, unmounting %s", signal.Signals(signum).name, path)
                    if native is None:
                        pyfuse3.terminate()
                    else:
                        native.request_stop()
                    return

        # the handler must be in place before READY=1, or an early SIGTERM kills us outright
        await nursery.start(stop_on_signal, name="signal-watcher")
        notify_systemd(b"READY=1")
        if native is None:
            await pyfuse3.main(min_tasks=4, max_tasks=options.max_tasks)
        else:
            await native.serve(max_tasks=options.max_tasks)
        nursery.cancel_scope.cancel()


def run_mount(
    directory: str,
    sink: ReplicationSink,
    options: MountOptions | None = None,
    companion: Companion | None = None,
    recorder: ChangeRecorder = NO_RECORDER,
) -> str:
    """Mount over ``directory`` and serve in the foreground until SIGINT/SIGTERM or an external
    unmount. Returns how the mount ended (for the operator)."""
    options = options or MountOptions()
    try:
        driver = chosen_driver()
    except DriverUnavailable as exc:
        raise MountError(str(exc)) from None
    path = check_target(directory)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # We create files as root on behalf of callers whose umask the kernel already applied.
    os.umask(0)
    with open_root(path) as root_fd:
        ops = Passthrough(
            root_fd,
            sink,
            attr_timeout=options.attr_timeout,
            entry_timeout=options.entry_timeout,
            recorder=recorder,
        )
        fuse_options = set(pyfuse3.default_options) | {
            "allow_other",
            "fsname=tandem",
            "subtype=tandem",
        }
        native: NativeSession | None = None
        try:
            if driver == "native":
                native = NativeSession(ops, path, fuse_options)
            else:
                pyfuse3.init(ops, path, fuse_options)
        except RuntimeError as exc:
            raise MountError(
                f"cannot mount {path}: {exc} (Tandem needs root and /dev/fuse; "
                f"see the kernel log: dmesg | tail)"
            ) from None
        outcome = "unmounted"
        ended = False
        try:
            log.info("serving %s (%s driver)", path, driver)
            if native is not None:
                native.start()
            trio.run(_serve, path, options, companion, native)
            ended = True
        finally:
            notify_systemd(b"STOPPING=1")
            if ended:
                outcome = unmount(path) if is_tandem_mount(path) else "unmounted from outside"
            else:
                # fail closed: the mount stays, its connection dead once this process is gone,
                # so the application cannot write past the mirror into the bare copy
                log.error("the mount of %s failed; it stays (dead) until the module starts", path)
            if native is not None:
                counts = native.counts()
                log.info(
                    "data plane: %d reads, %d flushes, %d seeks and %d capability probes "
                    "answered in C; %d requests handed to Python, %d answered",
                    counts["native_reads"],
                    counts["native_flushes"],
                    counts["native_seeks"],
                    counts["native_capability_answers"],
                    counts["handed_to_python"],
                    counts["answered_by_python"],
                )
                mix = native.handed_by_request()
                log.info(
                    "requests handed to Python: %s",
                    ", ".join(f"{name} {count}" for name, count in mix.items()) or "none",
                )
                if not native.close():
                    log.warning("the data plane's threads did not end; they end with the process")
            else:
                pyfuse3.close(unmount=False)
    return outcome
