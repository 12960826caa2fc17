"""The node process: runs the modules it is given, each as primary or secondary.

A primary module mounts each of its directories with its own `tandem mount` child process
(pyfuse3 serves one mount per process) replicating to the peer; a secondary module receives
every directory in this process, each on ``port + index``, its copies read-only to applications.
Roles are explicit here; electing them is the failover layer's job.

If a mount child dies the node stops every module and exits non-zero: a primary that silently
lost its mount would acknowledge nothing, or worse, let the application write underneath.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import trio

from tandem.fsdriver.mount import check_target, is_tandem_mount, notify_systemd

from .config import ModuleConfig
from .control import SOCKET_NAME, serve_control
from .journal import SecondaryJournal
from .receiver import Receiver, secondary_copy
from .stream_control import secondary_commands
from .wire import Identity

log = logging.getLogger(__name__)

STOP_GRACE = 30.0


class Role(enum.Enum):
    PRIMARY = "primary"
    SECONDARY = "secondary"


@dataclass(frozen=True)
class Assignment:
    module: ModuleConfig
    role: Role


class NodeFailed(Exception):
    pass


def stream_identity(node: str, module: ModuleConfig, index: int) -> Identity:
    """Each directory of a module is its own replication stream, named ``module/index``."""
    return Identity(node, f"{module.name}/{index}")


DEFAULT_STATE_DIR = "/var/lib/tandem"
STATE_DIR_VARIABLE = "TANDEM_STATE_DIR"


def default_state_dir() -> str:
    return os.environ.get(STATE_DIR_VARIABLE) or DEFAULT_STATE_DIR


def stream_dir(state_dir: str, module: str, index: int) -> str:
    """Where a stream keeps its journal and control socket, whichever role the node has."""
    return os.path.join(state_dir, "modules", module, str(index))


def journal_dir(state_dir: str, module: str, index: int) -> str:
    return os.path.join(stream_dir(state_dir, module, index), "journal")


def control_socket(state_dir: str, module: str, index: int) -> str:
    return os.path.join(stream_dir(state_dir, module, index), SOCKET_NAME)


def mount_command(
    node: str,
    module: ModuleConfig,
    index: int,
    secret_file: str,
    state_dir: str,
    verbose: bool,
) -> list[str]:
    _, peer_address = module.peer_of(node)
    host = f"[{peer_address}]" if ":" in peer_address else peer_address
    command = [sys.executable, "-m", "tandem.engine.cli"]
    if verbose:
        command.append("--verbose")
    command += ["mount", module.directories[index]]
    command += ["--replicate-to", f"{host}:{module.port_of(index)}"]
    command += ["--secret-file", secret_file, "--ack", module.ack]
    command += ["--timeout", repr(module.timeout)]
    command += ["--module", stream_identity(node, module, index).module, "--node", node]
    command += ["--journal", journal_dir(state_dir, module.name, index)]
    command += ["--control", control_socket(state_dir, module.name, index)]
    if module.resync_bandwidth is not None:
        command += ["--resync-bandwidth", repr(module.resync_bandwidth)]
    return command


class Node:
    def __init__(
        self,
        name: str,
        assignments: Sequence[Assignment],
        secret: bytes,
        secret_file: str,
        *,
        state_dir: str = DEFAULT_STATE_DIR,
        verbose: bool = False,
    ) -> None:
        self.name = name
        self.assignments = list(assignments)
        self.state_dir = state_dir
        self._secret = secret
        self._secret_file = secret_file
        self._verbose = verbose
        for assignment in self.assignments:
            assignment.module.peer_of(name)  # raises ConfigError if this node is not in it

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with ExitStack() as cleanup:
            async with trio.open_nursery() as nursery:
                for assignment in self.assignments:
                    if assignment.role is Role.PRIMARY:
                        for index in range(len(assignment.module.directories)):
                            await nursery.start(self._run_mount, assignment.module, index)
                    else:
                        await self._start_secondary(nursery, cleanup, assignment.module)
                log.info(
                    "node %s ready: %s",
                    self.name,
                    ", ".join(f"{a.module.name} {a.role.value}" for a in self.assignments),
                )
                task_status.started()

    def _make_stream_dir(self, module: ModuleConfig, index: int) -> None:
        path = stream_dir(self.state_dir, module.name, index)
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise NodeFailed(f"cannot create the state directory {path}: {exc.strerror}") from None

    async def _start_secondary(
        self, nursery: trio.Nursery, cleanup: ExitStack, module: ModuleConfig
    ) -> None:
        listen = module.nodes[self.name]
        for index, directory in enumerate(module.directories):
            self._make_stream_dir(module, index)
            root_fd = cleanup.enter_context(secondary_copy(directory))
            receiver = Receiver(
                root_fd,
                stream_identity(self.name, module, index),
                self._secret,
                durable=module.ack == "durable",
                handshake_timeout=module.timeout,
                journal=SecondaryJournal(journal_dir(self.state_dir, module.name, index)),
            )
            await nursery.start(receiver.serve, listen, module.port_of(index))
            commands = secondary_commands(receiver, directory)
            control = control_socket(self.state_dir, module.name, index)
            await nursery.start(serve_control, control, commands)
            log.info("module %s: secondary for %s", module.name, directory)

    async def _run_mount(
        self,
        module: ModuleConfig,
        index: int,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        directory = module.directories[index]
        check_target(directory)
        self._make_stream_dir(module, index)
        command = mount_command(
            self.name, module, index, self._secret_file, self.state_dir, self._verbose
        )
        # the node alone speaks to systemd; a child's READY would be taken for the node's
        env = {key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"}
        process = await trio.lowlevel.open_process(command, env=env)
        try:
            while not is_tandem_mount(directory):
                if process.poll() is not None:
                    raise NodeFailed(
                        f"module {module.name}: mounting {directory} failed "
                        f"(exit code {process.returncode}; see the messages above)"
                    )
                await trio.sleep(0.05)
            log.info("module %s: primary for %s", module.name, directory)
            task_status.started()
            code = await process.wait()
            raise NodeFailed(
                f"module {module.name}: the mount of {directory} ended unexpectedly "
                f"(exit code {code}); stopping the node"
            )
        finally:
            with trio.CancelScope(shield=True):
                await _stop_child(process)


async def _stop_child(process: trio.Process) -> None:
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_GRACE):
        await process.wait()
        return
    log.error("mount process %d did not stop within %g s; killing it", process.pid, STOP_GRACE)
    process.kill()
    await process.wait()


def run_node(node: Node) -> None:
    """Run until SIGINT/SIGTERM; raises NodeFailed if a module fails on its own."""

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                _notify(b"READY=1")
                async for signum in signals:
                    log.info("node %s stopping (%s)", node.name, signal.Signals(signum).name)
                    _notify(b"STOPPING=1")
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        failed, _ = group.split(NodeFailed)
        if failed is None:
            raise
        reasons = sorted({str(leaf) for leaf in _leaves(failed)})
        raise NodeFailed("; ".join(reasons)) from group


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


def _notify(message: bytes) -> None:
    notify_systemd(message)
