"""One module on this node, failed over: feeds the state machine (`module_state`) its events and
carries out its actions, one step at a time.

Events come from the heartbeat (what the peer says of itself, or its loss, after asking the
witness: `watcher`), from the copy received as secondary (in sync; or behind, when the stream
ended while the primary lives on), from the checkers (the application failed), and from the
operator (the module's control socket: `commands`). Each step is saved (`store`) before any of
its actions runs (`actions`).

What the peer hears of this module is the state whose actions are done, except that leaving the
serving role is told as soon as the copy is released: the peer must never take over while this
node may still acknowledge a write, and must learn at once when it no longer can.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import trio

from tandem.engine.config.modules import ModuleConfig, check_failover_timing
from tandem.engine.config.paths import app_log, module_dir, module_log, module_socket
from tandem.engine.config.secrets import SecretStore
from tandem.engine.control.channel import serve_control
from tandem.engine.failover.actions import ActionExecutor, AsideError
from tandem.engine.failover.checkers import watch_checker
from tandem.engine.failover.commands import module_commands
from tandem.engine.failover.holdings import Holdings, survey_copy
from tandem.engine.failover.module_log import ModuleLog
from tandem.engine.failover.module_state import (
    SERVING,
    Action,
    AppFailed,
    AsideFailed,
    Behind,
    KeepAside,
    Module,
    ModuleEvent,
    Policy,
    ReceiveCopy,
    Refuse,
    ServeCopy,
    Start,
    State,
    Stop,
    step,
)
from tandem.engine.failover.news import MAX_TOKENS, PeerNews, encode_news
from tandem.engine.failover.permission import grant_forever
from tandem.engine.failover.scripts import ScriptRunner
from tandem.engine.failover.store import ModuleStore, StoreError
from tandem.engine.failover.watcher import PeerWatch
from tandem.engine.failover.witness import WitnessWatch
from tandem.engine.replication.alone import AloneRequests
from tandem.engine.replication.copies import CopyFailed
from tandem.engine.replication.receiver import Receiver
from tandem.fsdriver.mount import release_leftovers
from tandem.heartbeat.probes import Witness
from tandem.heartbeat.service import HeartbeatService, Link
from tandem.vip.health import serve_health

log = logging.getLogger(__name__)

HISTORY_KEPT = 20  # state changes and take-over durations the status carries

_Reply = trio.MemorySendChannel[list[str]]


class ModuleRunner:
    def __init__(
        self,
        node: str,
        config: ModuleConfig,
        secret: SecretStore,
        secret_file: str,
        state_dir: str,
        *,
        verbose: bool = False,
    ) -> None:
        check_failover_timing(config)
        self.node = node
        self.config = config
        self.peer, peer_address = config.peer_of(node)
        self._state_dir = state_dir
        self.policy = Policy(
            node,
            self.peer,
            default_primary=config.default_primary,
            maxloop=config.maxloop,
            loop_interval=config.loop_interval,
            on_too_many_failures=config.on_failure,
            witness=bool(config.witnesses),
        )
        self.holdings = Holdings()
        self.alone_requests = AloneRequests(changed=lambda: self.heartbeat.poke())
        self.behind_for: tuple[str, ...] = ()  # the peer's requests answered: this copy is behind
        self._heartbeat_scope = trio.CancelScope()
        self.directory = module_dir(state_dir, config.name)
        self.store = ModuleStore(self.directory)
        # until the start is handled, the peer hears the copy as it was left, holding data (it
        # is not surveyed yet): a placeholder's epoch 0 made a waiting peer take its own older
        # copy for the newer one and serve it (a lab test: the returning node's acknowledged
        # writes were then only in what it kept aside); nor may an early heartbeat pass for
        # news of an empty copy the peer may overwrite
        try:
            remembered = self.store.load()
            self.module = Module(epoch=remembered.epoch, served=remembered.served, holds=True)
        except StoreError:
            self.module = Module(holds=True)  # the start says what is wrong with the store
        self.advertised = self.module
        self.since = time.time()  # when the module entered its current state
        self.log = ModuleLog(module_log(state_dir, config.name))
        # for the console, the metrics and support snapshots: the last state changes, how long
        # each take-over took (the actions that made this node serve), failed checks
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_KEPT)
        self.takeovers: deque[float] = deque(maxlen=HISTORY_KEPT)
        self.takeovers_total = 0
        self.checker_failures = 0
        # told each new state and its reason (the node's STATUS= line for systemd)
        self.on_state: Callable[[str, str], None] = lambda state, reason: None
        links = [Link("main", config.nodes[node], peer_address)]
        for index, network in enumerate(config.heartbeat_networks):
            links.append(Link(f"net{index + 1}", network[node], network[self.peer]))
        self.secrets = secret
        self.heartbeat = HeartbeatService(
            node,
            self.peer,
            secret.heartbeat_secrets,
            links,
            port=config.port,
            interval=config.heartbeat_interval,
            timeout=config.heartbeat_timeout,
            payload=self._news,
        )
        self.actions = ActionExecutor(
            node,
            config,
            secret,
            secret_file,
            state_dir,
            self.directory,
            # next to the module's file: <config-dir>/modules/<name>/start_prim
            ScriptRunner(
                os.path.join(os.path.dirname(config.source), config.name),
                app_log(state_dir, config.name),
                config.name,
                node,
                timeout=config.script_timeout,
            ),
            self.log,
            verbose=verbose,
            ask_peer_to_serve=self.heartbeat.poke,
            copy_released=self._copy_released,
            alone_requests=self.alone_requests,
        )
        self.witness = WitnessWatch(
            [Witness(host, port) for host, port in config.witnesses], config.heartbeat_interval
        )
        self._events_in, self._events_out = trio.open_memory_channel[
            tuple[ModuleEvent, _Reply | None]
        ](256)
        self.watch = PeerWatch(
            config.name,
            self.peer,
            self.heartbeat,
            self.witness,
            config.heartbeat_timeout,
            config.heartbeat_interval,
            self.log,
            module=lambda: self.module,
            advertised=lambda: self.advertised,
            receivers=lambda: self.actions.receivers,
            send=self._tell,
        )

    @property
    def receivers(self) -> list[Receiver]:
        return self.actions.receivers

    @property
    def vip_held(self) -> bool:
        return self.actions.vip_held

    @property
    def peer_news(self) -> PeerNews | None:
        return self.watch.peer_news

    # -- what the peer hears ------------------------------------------------------------------

    def _news(self) -> bytes:
        return encode_news(
            self.advertised,
            self.config.name,
            self.vip_held,
            tuple(self.alone_requests.tokens()),
            self.behind_for,
        )

    def _advertise(self, module: Module) -> None:
        if module != self.advertised:
            self.advertised = module
            self.heartbeat.poke()

    def _copy_released(self) -> None:
        if self.advertised.state in SERVING:
            # every acknowledged write is on the peer now: say so before anything else
            self._advertise(self.module)

    # -- running --------------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self.log.note(f"--- node {self.node} starts module {self.config.name}")
        async with trio.open_nursery() as nursery:
            self.actions.bind(nursery)
            try:
                await nursery.start(self._heartbeat_until_stopped)
                await nursery.start(
                    serve_control,
                    module_socket(self._state_dir, self.config.name),
                    module_commands(
                        self._ask, lambda: self.module, self.store, self.status, self._start_event
                    ),
                )
                if self.config.health_port is not None:
                    await nursery.start(
                        serve_health,
                        self.config.nodes[self.node],
                        self.config.health_port,
                        self.config.name,
                        self._serving,
                    )
                nursery.start_soon(self.watch.run)
                nursery.start_soon(
                    grant_forever,
                    self.alone_requests,
                    lambda: self.module.state,
                    lambda: self.peer_news,
                )
                if self.witness:
                    nursery.start_soon(self.witness.probe_forever)
                for checker in self.config.checkers:
                    nursery.start_soon(
                        watch_checker,
                        checker,
                        lambda: self.advertised.state in SERVING,
                        lambda: self.module.state in SERVING,
                        self._app_failed,
                    )
                await self.actions.drop_stale_vip()
                await self._handle(await self._start_event())
                task_status.started()
                async for event, reply in self._events_out:
                    answer = await self._handle(event)
                    if reply is not None:
                        await reply.send(answer)
            finally:
                # inside the nursery: the copy (shielded) stays mounted until stop_prim has run
                with trio.CancelScope(shield=True):
                    try:
                        await self._handle(Stop(), why="the node stops")
                        await self.actions.dismiss_ready_mounts()
                        self.store.stopped(self.module)
                        self.log.note(f"--- node {self.node} stopped module {self.config.name}")
                    finally:
                        self._heartbeat_scope.cancel()

    async def _heartbeat_until_stopped(self, task_status: trio.TaskStatus[None]) -> None:
        """The heartbeat outlives the cancellation of everything else: while a stopping node
        runs stop_prim and releases the VIP, the peer must go on hearing that it serves, or it
        would take the VIP over before this node has let go of it."""
        with trio.CancelScope(shield=True) as self._heartbeat_scope:
            await self.heartbeat.run(task_status=task_status)

    async def _start_event(self) -> Start:
        """What the store remembers, and what the copy holds: a copy with data and no history
        must not be taken for an empty one (it would be overwritten)."""
        for directory in self.config.directories:
            # what a failed run left over the path hides the copy: the module starts again
            await trio.to_thread.run_sync(release_leftovers, directory)
        self.holdings = await trio.to_thread.run_sync(survey_copy, self.config.directories)
        return replace(self.store.start_event(), holds=self.holdings.holds)

    def _serving(self, _: str) -> tuple[bool, str]:
        serving = self.advertised.state in SERVING
        return serving, f"{self.config.name} {self.advertised.state.value} on {self.node}"

    async def _tell(self, event: ModuleEvent) -> None:
        await self._events_in.send((event, None))

    async def _app_failed(self, detail: str) -> None:
        self.checker_failures += 1
        self.log.note(detail)
        await self._tell(AppFailed(time.monotonic()))

    async def _ask(self, event: ModuleEvent) -> list[str]:
        """Step an operator's event in order with every other; the refusals come back."""
        reply_in, reply_out = trio.open_memory_channel[list[str]](1)
        await self._events_in.send((event, reply_in))
        return await reply_out.receive()

    async def _handle(self, event: ModuleEvent, why: str | None = None) -> list[str]:
        """One step: saved, logged, carried out. Returns the refusals, for the operator."""
        before = self.module
        began = time.monotonic()
        if isinstance(event, Behind):
            # the sessions still open may carry a resync's end: none may make this copy up
            # to date again once it is declared behind
            for receiver in self.receivers:
                receiver.drop(event.why)
        after, actions = step(before, event, self.policy)
        if isinstance(event, Stop) and why:
            after = replace(after, reason=why)
        self.module = after
        self.store.save(after)
        if after.state is not before.state:
            self.since = time.time()
        if (after.state, after.reason) != (before.state, before.reason):
            self.log.note(f"{before.state.value} -> {after.state.value}: {after.reason}")
            self.history.append(
                {
                    "at": round(time.time(), 3),
                    "from": before.state.value,
                    "to": after.state.value,
                    "reason": after.reason,
                }
            )
            log.info("module %s: %s (%s)", self.config.name, after.state.value, after.reason)
            self.on_state(after.state.value, after.reason)
        refusals = []
        aside_failed = ""
        if peer_may_serve_without_us(before, after, actions):
            await self.actions.fence_copy()  # before stop_prim: nothing acknowledged alone now
            # fenced, it acknowledges nothing any more: the peer may hear at once that it no
            # longer serves. Told only at the copy's release (after a slow stop_prim), a peer
            # that took over meanwhile took this node, back in reach, for a second server and
            # yielded its own newer writes (found by the nemesis: 2,119 writes in 4 s)
            self._advertise(after)
        for action in actions:
            if isinstance(action, Refuse):
                refusals.append(action.why)
                continue
            try:
                await self.actions.act(action, self.module)
            except AsideError as exc:
                # the copy could not be kept: it must not be overwritten by what follows
                self.log.note(f"KeepAside failed: {exc}")
                log.error("module %s: %s", self.config.name, exc)
                aside_failed = str(exc)
                break
            except Exception as exc:
                if isinstance(action, ServeCopy | ReceiveCopy):
                    # the VIP and start_prim must never follow a copy that is not mounted (the
                    # application would write past the mirror): end the node instead
                    self.log.note(f"{type(action).__name__} failed: {exc}; stopping")
                    raise CopyFailed(f"module {self.config.name}: {exc}") from exc
                # any other failed action must not leave the ones after it undone
                self.log.note(f"{type(action).__name__} failed: {exc}")
                log.exception("module %s: %s failed", self.config.name, type(action).__name__)
        if aside_failed:
            return refusals + await self._handle(AsideFailed(aside_failed))
        if isinstance(event, Behind) and event.answering:
            # saved above: only now may the peer hear that this copy is behind
            self.behind_for = (self.behind_for + event.answering)[-MAX_TOKENS:]
            self.heartbeat.poke()
        self._advertise(self.module)
        if before.state not in SERVING and self.module.state in SERVING:
            self.takeovers.append(round(time.monotonic() - began, 3))
            self.takeovers_total += 1
        await self.actions.keep_mounts_ready(self.module.state)
        return refusals

    # -- the operator ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        news, last = self.peer_news, self.watch.last_peer_news
        return {
            "module": self.config.name,
            "node": self.node,
            "state": self.module.state.value,
            "reason": self.module.reason,
            # a reason says why the state was entered: how long ago tells whether it is news
            "since": round(self.since, 3),
            "for_s": round(time.time() - self.since, 1),
            "serving": self.module.state in SERVING,
            "up_to_date": self.module.sure,
            "holds": self.holdings.as_dict(),
            "epoch": self.module.epoch,
            "vip": self.config.vip,
            "vip_held": self.vip_held,
            "checkers": [f"{c.kind} {c.target}" for c in self.config.checkers],
            "checker_failures": self.checker_failures,
            "history": list(self.history),
            "takeovers": {"total": self.takeovers_total, "last_s": list(self.takeovers)},
            "peer": {
                "node": self.peer,
                "heartbeat": self.heartbeat.status(),
                # which of this node's secrets the peer signs with ("previous": it has not been
                # promoted yet, and the previous secret may not be retired)
                "signs_with": self.secrets.role_of(self.heartbeat.peer_signer()),
                "state": news.state.value if news else None,
                "reason": news.reason if news else None,
                # what a swap asks of the peer: an up-to-date SECOND as the peer last said
                "up_to_date": self.module.peer_sure if news else None,
                "heard_s_ago": round(time.monotonic() - self.watch.peer_news_at, 1)
                if self.watch.last_peer_news
                else None,
                # what the peer said last, also once it is lost (then `state` is null)
                "last_state": last.state.value if last else None,
                "vip_held": news.vip if news else None,
                "holds": news.holds if news else None,
            },
        }


def peer_may_serve_without_us(before: Module, after: Module, actions: list[Action]) -> bool:
    """Stepping down because the peer may be serving (this node may be the isolated one, or a
    split brain is healed in its favour): a write acknowledged alone from now on would be lost.
    (A stop or a swap hands over through the stream; a peer that sees the stream end while
    this node lives knows it is behind and does not take over.)"""
    if before.state not in SERVING or after.state in SERVING:
        return False
    return after.state is State.WAIT or any(isinstance(a, KeepAside) for a in actions)
