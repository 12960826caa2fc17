"""A module's copy on this node, served or received.

Served: each directory mounted by its own `tandem mount` child process (pyfuse3 serves one mount
per process) replicating to the peer. Received: every directory received in this process, each
on ``port + index``, the copies read-only to applications. Each runs as a task until cancelled;
cancelling a served copy unmounts it, which first drains every acknowledged write to the peer.

A mount child that dies on its own ends the node (`CopyFailed`): a primary that silently lost
its mount would acknowledge nothing, or worse, let the application write underneath.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
from contextlib import ExitStack

import trio

from tandem.engine.config.modules import ModuleConfig
from tandem.engine.config.paths import control_socket, stream_dir
from tandem.engine.config.stream import module_stream
from tandem.engine.control.channel import ControlError, ask, serve_control
from tandem.engine.protocol.keys import KeySource
from tandem.engine.reintegration.journal import SecondaryJournal
from tandem.engine.replication.alone import AloneRequests, follow_asking
from tandem.engine.replication.commands import secondary_commands
from tandem.engine.replication.holders import stop_holders
from tandem.engine.replication.receiver import Receiver, secondary_copy
from tandem.fsdriver.mount import check_target, is_tandem_mount

log = logging.getLogger(__name__)

STOP_GRACE = 30.0
ALIVE_EVERY = 1.0  # how often a mount child is asked whether it still answers
ALIVE_TIMEOUT = 2.0
HUNG_AFTER = 6.0  # seconds without an answer: the mount is hung, a failed mount


class CopyFailed(Exception):
    pass


def make_stream_dir(state_dir: str, module: ModuleConfig, index: int) -> None:
    path = stream_dir(state_dir, module.name, index)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise CopyFailed(f"cannot create the state directory {path}: {exc.strerror}") from None


def mount_command(
    node: str,
    module: ModuleConfig,
    index: int,
    secret_file: str,
    state_dir: str,
    verbose: bool,
    failover: bool = False,
) -> list[str]:
    settings = module_stream(node, module, index, state_dir, secret_file, failover=failover)
    command = [sys.executable, "-m", "tandem.engine.cli"]
    if verbose:
        command.append("--verbose")
    command += ["mount", settings.directory, "--settings", settings.to_json()]
    return command


def _child_environment() -> dict[str, str]:
    # the node alone speaks to systemd; a child's READY would be taken for the node's
    return {key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"}


async def spawn_ready_mounts(
    node: str, module: ModuleConfig, secret_file: str, state_dir: str, verbose: bool
) -> list[trio.Process]:
    """One mount child per directory, started now but mounting only when told "go"
    (`serve_copy` with requests: the failover layer's); closing their stdin makes them exit."""
    ready = []
    for index in range(len(module.directories)):
        command = mount_command(node, module, index, secret_file, state_dir, verbose, True)
        ready.append(
            await trio.lowlevel.open_process(
                [*command, "--wait-for-go"], env=_child_environment(), stdin=subprocess.PIPE
            )
        )
    return ready


async def dismiss_ready_mounts(ready: list[trio.Process]) -> None:
    for process in ready:
        if process.stdin is not None:
            await process.stdin.aclose()
    for process in ready:
        with trio.move_on_after(STOP_GRACE):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def serve_copy(
    node: str,
    module: ModuleConfig,
    secret_file: str,
    state_dir: str,
    verbose: bool,
    ready: list[trio.Process] | None = None,
    requests: AloneRequests | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Mount every directory (with the children of `spawn_ready_mounts` if given); started
    once all are mounted; unmounts them when cancelled. With ``requests`` (the failover
    layer's) the mounts go on alone only when the node permits it."""
    async with trio.open_nursery() as nursery:
        for index in range(len(module.directories)):
            process = ready[index] if ready else None
            await nursery.start(
                _run_mount, node, module, index, secret_file, state_dir, verbose, process, requests
            )
        task_status.started()


async def _run_mount(
    node: str,
    module: ModuleConfig,
    index: int,
    secret_file: str,
    state_dir: str,
    verbose: bool,
    ready: trio.Process | None = None,
    requests: AloneRequests | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    directory = module.directories[index]
    failover = requests is not None
    check_target(directory)
    make_stream_dir(state_dir, module, index)
    process = ready
    if process is not None and process.poll() is None and process.stdin is not None:
        try:
            await process.stdin.send_all(b"go\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            process = None  # it died meanwhile: start one now
    else:
        process = None
    if process is None:
        command = mount_command(node, module, index, secret_file, state_dir, verbose, failover)
        process = await trio.lowlevel.open_process(command, env=_child_environment())
    try:
        while not is_tandem_mount(directory):
            if process.poll() is not None:
                raise CopyFailed(
                    f"module {module.name}: mounting {directory} failed "
                    f"(exit code {process.returncode}; see the messages above)"
                )
            await trio.sleep(0.02)
        log.info("module %s: primary for %s", module.name, directory)
        task_status.started()
        control = control_socket(state_dir, module.name, index)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_alive, process, control, directory, module.name)
            if requests is not None:
                nursery.start_soon(follow_asking, control, requests)
            code = await process.wait()
            nursery.cancel_scope.cancel()
        raise CopyFailed(
            f"module {module.name}: the mount of {directory} ended unexpectedly "
            f"(exit code {code}); stopping the node"
        )
    finally:
        with trio.CancelScope(shield=True):
            await _stop_child(process, directory)


async def _watch_alive(process: trio.Process, control: str, directory: str, module: str) -> None:
    """A hung mount is a failed mount: writers wait on it forever while the node would go on
    telling the peer it serves. Silence on its control socket for `HUNG_AFTER` seconds kills it
    (its mount stays, dead: nothing reaches the bare copy), and the node fails over."""
    last_answer = trio.current_time()
    while True:
        await trio.sleep(ALIVE_EVERY)
        try:
            await trio.to_thread.run_sync(
                functools.partial(ask, control, "status", timeout=ALIVE_TIMEOUT),
                abandon_on_cancel=True,
            )
            last_answer = trio.current_time()
            continue
        except ControlError as exc:
            silent = trio.current_time() - last_answer
            if silent < HUNG_AFTER:
                log.warning(
                    "module %s: the mount of %s did not answer (%s)", module, directory, exc
                )
                continue
        log.error(
            "module %s: the mount of %s answered nothing for %.0f s: hung; killing it",
            module,
            directory,
            trio.current_time() - last_answer,
        )
        process.kill()
        return


async def _stop_child(process: trio.Process, directory: str) -> None:
    if process.returncode is not None:
        return  # died: its mount stays, dead, until the module starts its copy again
    # the scripts have stopped the application; whatever still uses the mount is stopped now,
    # so that the unmount is not busy (a lazily detached mount would be fenced, its users
    # failing from then on)
    await trio.to_thread.run_sync(stop_holders, directory, frozenset({process.pid}))
    process.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_GRACE):
        await process.wait()
        return
    log.error("mount process %d did not stop within %g s; killing it", process.pid, STOP_GRACE)
    process.kill()
    await process.wait()


async def receive_copy(
    node: str,
    module: ModuleConfig,
    secret: KeySource,
    state_dir: str,
    receivers: list[Receiver],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Receive every directory (``receivers`` is filled with their receivers); started once all
    listen; stops receiving and makes the copies writable again when cancelled."""
    with ExitStack() as cleanup:
        async with trio.open_nursery() as nursery:
            for index, directory in enumerate(module.directories):
                make_stream_dir(state_dir, module, index)
                root_fd = cleanup.enter_context(secondary_copy(directory))
                settings = module_stream(node, module, index, state_dir, None)
                assert settings.listen is not None and settings.journal and settings.control
                journal = SecondaryJournal(settings.journal)
                receiver = Receiver(root_fd, settings, secret, journal=journal)
                receivers.append(receiver)
                await nursery.start(receiver.serve, settings.listen.host, settings.listen.port)
                commands = secondary_commands(receiver, directory)
                await nursery.start(serve_control, settings.control, commands)
                log.info("module %s: secondary for %s", module.name, directory)
            task_status.started()
