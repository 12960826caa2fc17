"""Carries out what the state machine asks (`module_state.Action`): scripts, the VIP, the copy
served or received, a split brain's copy kept aside, the peer asked to serve.

The copy is shielded from cancellation: only `release_copy` ends it, after the scripts stopped
the application (a node stopping must not unmount under a running application). A node that may
have to take over keeps its mount children started, waiting for "go".
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

import trio

from tandem.engine.config.modules import ConfigError, ModuleConfig
from tandem.engine.config.paths import aside_marker, control_socket
from tandem.engine.config.secrets import SecretStore
from tandem.engine.control.channel import ControlError, ask
from tandem.engine.failover.module_log import ModuleLog
from tandem.engine.failover.module_state import (
    AcquireVip,
    Action,
    AskPeerToServe,
    KeepAside,
    Module,
    ReceiveCopy,
    ReleaseCopy,
    ReleaseVip,
    RunScript,
    ServeCopy,
    State,
)
from tandem.engine.failover.scripts import ScriptRunner
from tandem.engine.replica.aside import request_keeping
from tandem.engine.replication.alone import AloneRequests
from tandem.engine.replication.copies import (
    CopyFailed,
    dismiss_ready_mounts,
    make_stream_dir,
    receive_copy,
    serve_copy,
    spawn_ready_mounts,
)
from tandem.engine.replication.receiver import Receiver
from tandem.vip import address as vip_address

log = logging.getLogger(__name__)

ASIDE_MARGIN = 64 << 20  # free space left after a copy is kept aside
FENCE_TIMEOUT = 2.0


class AsideError(Exception):
    """Keeping a copy aside cannot be done (the disk is short); worded for the operator."""


def _free_bytes(path: str) -> int:
    found = os.statvfs(path)
    return found.f_bavail * found.f_frsize


class ActionExecutor:
    def __init__(
        self,
        node: str,
        config: ModuleConfig,
        secret: SecretStore,
        secret_file: str,
        state_dir: str,
        directory: str,
        scripts: ScriptRunner,
        module_log: ModuleLog,
        *,
        verbose: bool,
        ask_peer_to_serve: Callable[[], None],
        copy_released: Callable[[], None],
        alone_requests: AloneRequests,
    ) -> None:
        self.node = node
        self.config = config
        self._secret = secret
        self._secret_file = secret_file
        self._state_dir = state_dir
        self._directory = directory
        self.scripts = scripts
        self._log = module_log
        self._verbose = verbose
        self._ask_peer_to_serve = ask_peer_to_serve
        self._copy_released = copy_released
        self._alone_requests = alone_requests
        self.vip_held = False
        self._vip_interface = config.vip_interface
        self._copy: trio.CancelScope | None = None
        self._copy_done = trio.Event()
        self._copy_done.set()
        self.receivers: list[Receiver] = []
        self._ready_mounts: list[trio.Process] = []
        self._nursery: trio.Nursery | None = None

    def bind(self, nursery: trio.Nursery) -> None:
        """Copies run as tasks of the runner's nursery."""
        self._nursery = nursery

    async def act(self, action: Action, module: Module) -> None:
        match action:
            case RunScript(name=name):
                result = await self.scripts.run(
                    name, state=module.state.value, reason=module.reason
                )
                if result.ran:
                    self._log.note(result.describe())
                if not result.ok:
                    log.warning("module %s: %s", self.config.name, result.describe())
            case AcquireVip():
                await self._vip(acquire=True)
            case ReleaseVip():
                await self._vip(acquire=False)
            case ServeCopy():
                await self.release_copy()
                await self._start_copy(serve=True)
            case ReceiveCopy():
                await self.release_copy()
                await self._start_copy(serve=False)
            case ReleaseCopy():
                await self.release_copy()
            case KeepAside(why=why):
                await self.release_copy()
                await self._keep_aside(why)
            case AskPeerToServe():
                self._ask_peer_to_serve()  # the peer takes over once it hears we stepped down
            case _:
                raise AssertionError(action)

    async def fence_copy(self) -> None:
        """Leaving the serving role: from now on the mounts acknowledge nothing without the
        peer (a write waiting on an unreachable peer fails instead of being acknowledged
        alone after its timeout, while stop_prim runs and the copy is released)."""
        if self._copy is None:
            return
        for index in range(len(self.config.directories)):
            control = control_socket(self._state_dir, self.config.name, index)
            try:
                await trio.to_thread.run_sync(
                    functools.partial(ask, control, "fence", timeout=FENCE_TIMEOUT),
                    abandon_on_cancel=True,
                )
            except ControlError as exc:  # a dead or hung mount acknowledges nothing anyway
                log.warning("module %s: could not fence %s: %s", self.config.name, control, exc)

    async def keep_mounts_ready(self, state: State) -> None:
        """A node that may have to take over keeps its mount children started (a failover
        then does not wait for Python to start and import); one that serves or is stopped
        does not need them."""
        wanted = state in (State.SECOND, State.WAIT)
        if wanted and not self._ready_mounts:
            self._ready_mounts = await spawn_ready_mounts(
                self.node, self.config, self._secret_file, self._state_dir, self._verbose
            )
        elif not wanted and self._ready_mounts and state is State.STOP:
            await self.dismiss_ready_mounts()

    async def dismiss_ready_mounts(self) -> None:
        ready, self._ready_mounts = self._ready_mounts, []
        await dismiss_ready_mounts(ready)

    async def _vip(self, *, acquire: bool) -> None:
        if self.config.vip is None:
            return
        if self._vip_interface is None:
            address = self.config.nodes[self.node]
            self._vip_interface = await trio.to_thread.run_sync(vip_address.interface_of, address)
        change = vip_address.acquire if acquire else vip_address.release
        done = await trio.to_thread.run_sync(change, self._vip_interface, self.config.vip)
        self.vip_held = acquire
        if acquire or "was not on" not in done:
            self._log.note(done)

    async def drop_stale_vip(self) -> None:
        """A node process that crashed (its host did not) left the address behind: the peer
        may hold it by now."""
        if self.config.vip is None:
            return
        try:
            await self._vip(acquire=False)
        except vip_address.VipError as exc:  # checked at start: a setting to fix, said so
            raise ConfigError(f"{self.config.source}: vip: {exc}") from None

    async def _start_copy(self, *, serve: bool) -> None:
        assert self._nursery is not None, "bind() first"
        scope = trio.CancelScope()
        done = trio.Event()
        self.receivers = []

        async def run(task_status: trio.TaskStatus[None]) -> None:
            # shielded: only `release_copy` ends a copy, after the scripts stopped the
            # application (a node stopping must not unmount under a running application)
            try:
                with trio.CancelScope(shield=True), scope:
                    if serve:
                        ready, self._ready_mounts = self._ready_mounts, []
                        await serve_copy(
                            self.node,
                            self.config,
                            self._secret_file,
                            self._state_dir,
                            self._verbose,
                            ready,
                            self._alone_requests,
                            task_status=task_status,
                        )
                    else:
                        await receive_copy(
                            self.node,
                            self.config,
                            self._secret.keyring,
                            self._state_dir,
                            self.receivers,
                            task_status=task_status,
                        )
            finally:
                done.set()

        self._copy, self._copy_done = scope, done
        await self._nursery.start(run)

    async def release_copy(self) -> None:
        if self._copy is None:
            return
        self._copy.cancel()
        await self._copy_done.wait()
        self._copy = None
        self.receivers = []
        self._copy_released()

    async def _keep_aside(self, why: str) -> None:
        """This copy holds data the peer has not served and is about to follow it: every path
        the coming resync changes is kept aside first (`tandem.engine.replica.aside`): exactly
        the paths that differ, each one only if the disk has room for it."""
        aside = os.path.join(self._directory, "aside")
        free = await trio.to_thread.run_sync(_free_bytes, self._directory)
        if free < ASIDE_MARGIN:
            raise AsideError(
                f"cannot keep this copy's changes aside: {self._directory} has "
                f"{free >> 20} MiB free (free some space, or copy "
                f"{', '.join(self.config.directories)} away by hand, then `tandem start` again)"
            )
        try:
            for index in range(len(self.config.directories)):
                make_stream_dir(self._state_dir, self.config, index)
                marker = aside_marker(self._state_dir, self.config.name, index)
                await trio.to_thread.run_sync(request_keeping, marker, why)
        except (OSError, CopyFailed) as exc:  # not kept: then not overwritten either
            raise AsideError(
                f"cannot ask for this copy's changes to be kept aside: {exc}"
            ) from None
        self._log.note(
            f"the paths the resync changes in this copy are kept aside first, in {aside}: {why}"
        )
        log.warning(
            "module %s: %s; the paths the resync changes are kept aside first in %s",
            self.config.name,
            why,
            aside,
        )
