"""The node process: runs the modules it is given.

A module given a role (``web=primary``, ``web=secondary``) keeps it: replication only, nothing
fails over (tests and manual setups). A module given by name alone is run by its
`ModuleRunner`: the heartbeat, the state machine and the failover decide where it serves.

If a mount child dies the node stops every module and exits non-zero
(`tandem.engine.replication.copies`).
"""

from __future__ import annotations

import enum
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import trio

from tandem.engine.api.app import ApiContext
from tandem.engine.api.server import Listen, serve_api
from tandem.engine.config.modules import ConfigError, ModuleConfig
from tandem.engine.config.paths import (  # noqa: F401  (the names the commands import from here)
    DEFAULT_STATE_DIR,
    STATE_DIR_VARIABLE,
    control_socket,
    default_state_dir,
)
from tandem.engine.config.secrets import SecretStore
from tandem.engine.control.failures import leaves
from tandem.engine.failover.runner import ModuleRunner
from tandem.engine.replication.copies import CopyFailed, receive_copy, serve_copy
from tandem.fsdriver.mount import notify_systemd

log = logging.getLogger(__name__)


class FixedRole(enum.Enum):
    PRIMARY = "primary"
    SECONDARY = "secondary"


@dataclass(frozen=True)
class Assignment:
    module: ModuleConfig
    role: FixedRole | None  # None: the failover layer decides


class NodeFailed(Exception):
    pass


@dataclass(frozen=True)
class ApiSettings:
    listen: Listen | None
    config_dir: str
    tls: bool = True


class Node:
    def __init__(
        self,
        name: str,
        assignments: Sequence[Assignment],
        secret: SecretStore,
        secret_file: str,
        *,
        state_dir: str = DEFAULT_STATE_DIR,
        verbose: bool = False,
        api: ApiSettings | None = None,
    ) -> None:
        self.name = name
        self.api = api
        self.assignments = list(assignments)
        self.state_dir = state_dir
        self._secret = secret
        self._secret_file = secret_file
        self._verbose = verbose
        self.runners: dict[str, ModuleRunner] = {}
        self._states: dict[str, str] = {}
        for assignment in self.assignments:
            assignment.module.peer_of(name)  # raises ConfigError if this node is not in it
            if assignment.role is None:
                runner = ModuleRunner(
                    name, assignment.module, secret, secret_file, state_dir, verbose=verbose
                )
                runner.on_state = partial(self._state_changed, assignment.module.name)
                self.runners[assignment.module.name] = runner

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for assignment in self.assignments:
                module = assignment.module
                if assignment.role is FixedRole.PRIMARY:
                    await nursery.start(
                        serve_copy,
                        self.name,
                        module,
                        self._secret_file,
                        self.state_dir,
                        self._verbose,
                    )
                elif assignment.role is FixedRole.SECONDARY:
                    await nursery.start(
                        receive_copy, self.name, module, self._secret.keyring, self.state_dir, []
                    )
                else:
                    await nursery.start(self.runners[module.name].run)
            if self.api is not None and self.api.listen is not None:
                await nursery.start(serve_api, self._api_context(), self.api.listen)
            log.info(
                "node %s ready: %s",
                self.name,
                ", ".join(
                    f"{a.module.name} {a.role.value if a.role else 'with failover'}"
                    for a in self.assignments
                ),
            )
            task_status.started()

    def _state_changed(self, module: str, state: str, reason: str) -> None:
        """systemctl status shows every module's state and why, in one line."""
        self._states[module] = f"{module} {state} ({reason})"
        _notify(f"STATUS={'; '.join(self._states[m] for m in sorted(self._states))}".encode())

    def _api_context(self) -> ApiContext:
        assert self.api is not None and self.api.listen is not None
        return ApiContext(
            node=self.name,
            state_dir=self.state_dir,
            config_dir=self.api.config_dir,
            modules={a.module.name: a.module for a in self.assignments},
            held_secrets=self._secret.heartbeat_secrets,
            port=self.api.listen.port,
            tls=self.api.tls,
        )


def run_node(node: Node) -> None:
    """Run until SIGINT/SIGTERM; raises NodeFailed if a module fails on its own."""

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                _notify(b"READY=1")
                every = watchdog_interval(os.environ)
                if every is not None:
                    nursery.start_soon(_keep_watchdog_fed, every)
                async for signum in signals:
                    log.info("node %s stopping (%s)", node.name, signal.Signals(signum).name)
                    _notify(b"STOPPING=1")
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        failed, _ = group.split((NodeFailed, CopyFailed, ConfigError))
        if failed is None:
            raise
        reasons = sorted({str(leaf) for leaf in leaves(failed)})
        raise NodeFailed("; ".join(reasons)) from group


def _notify(message: bytes) -> None:
    notify_systemd(message)


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """How often to tell systemd the node lives: half its WatchdogSec (None: no watchdog, or
    one meant for another process)."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


async def _keep_watchdog_fed(every: float) -> None:
    # a ping from the node's own trio loop: a loop stuck in a blocking call misses it, and
    # systemd restarts the node (the peer takes over as after any crash)
    while True:
        _notify(b"WATCHDOG=1")
        await trio.sleep(every)
