"""One module on this node, failed over: feeds the state machine (`module_state`) its events and
carries out its actions, one step at a time.

Events come from the heartbeat (what the peer says of itself, or its loss, after asking the
witness), from the copy received as secondary (in sync; or behind, when the stream ended while
the primary lives on), from the checkers (the application failed), and from the operator (the
module's control socket). Each step is saved (`module_store`) before any of its actions runs.

What the peer hears of this module is the state whose actions are done, except that leaving the
serving role is told as soon as the copy is released: the peer must never take over while this
node may still acknowledge a write, and must learn at once when it no longer can.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, replace
from typing import Any

import trio

from tandem.engine.config.modules import (
    WITNESS_TIMEOUT,
    CheckerConfig,
    ConfigError,
    ModuleConfig,
    check_failover_timing,
)
from tandem.engine.config.paths import app_log, module_dir, module_log, module_socket
from tandem.engine.control.channel import ControlError, Handler, serve_control
from tandem.engine.failover.checkers import run_check
from tandem.engine.failover.module_state import (
    SERVING,
    AcquireVip,
    Action,
    AppFailed,
    AskPeerToServe,
    Behind,
    Event,
    InSync,
    KeepAside,
    Module,
    PeerLost,
    PeerSeen,
    Policy,
    Prim,
    ReceiveCopy,
    Refuse,
    ReleaseCopy,
    ReleaseVip,
    RunScript,
    Second,
    ServeCopy,
    State,
    Stop,
    Swap,
    step,
)
from tandem.engine.failover.scripts import ScriptRunner
from tandem.engine.failover.store import ModuleStore
from tandem.engine.replication.copies import (
    CopyFailed,
    dismiss_ready_mounts,
    receive_copy,
    serve_copy,
    spawn_ready_mounts,
)
from tandem.engine.replication.receiver import Receiver
from tandem.heartbeat.detector import Verdict
from tandem.heartbeat.probes import Witness, witness_reachable
from tandem.heartbeat.service import HeartbeatService, Link
from tandem.vip import address as vip_address
from tandem.vip.health import serve_health

log = logging.getLogger(__name__)

WATCH_EVERY = 0.05
# The witness is asked all the time, so that when the peer falls silent each side already knows
# whether it still reaches the world. A router answers a LAN ping in milliseconds.
WITNESS_PROBE_TIMEOUT = 0.3
WITNESS_PROBE_EVERY = 0.2
# A serving node that hears neither the peer nor the witness steps down at this fraction of the
# heartbeat timeout: before the peer (which reaches the witness) takes over at the full timeout.
SELF_FENCE_AT = 0.6
# A peer heartbeat heard this long after the stream ended proves the primary outlived the
# stream (it may go on alone): longer than a heartbeat already in flight takes to arrive.
BEHIND_GRACE = 0.5
PAYLOAD_VERSION = 1


@dataclass(frozen=True)
class PeerNews:
    state: State
    epoch: int
    served: bool
    sure: bool
    reason: str
    vip: bool


def encode_news(module: Module, name: str, vip_held: bool) -> bytes:
    return json.dumps(
        {
            "v": PAYLOAD_VERSION,
            "module": name,
            "state": module.state.value,
            "epoch": module.epoch,
            "served": module.served,
            "sure": module.sure,
            "reason": module.reason[:300],
            "vip": vip_held,
        },
        separators=(",", ":"),
    ).encode()


def decode_news(payload: bytes, name: str) -> PeerNews:
    """Raises ValueError (worded) for anything but this module's news."""
    raw = json.loads(payload)
    if not isinstance(raw, dict) or raw.get("v") != PAYLOAD_VERSION:
        raise ValueError(f"heartbeat news of another version ({str(raw)[:60]})")
    if raw.get("module") != name:
        raise ValueError(
            f"the peer's heartbeats on this port are for module {raw.get('module')!r}, "
            f"not {name!r}: the two nodes' configurations differ"
        )
    epoch = raw.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise ValueError(f"bad epoch in the peer's news: {epoch!r}")
    return PeerNews(
        State(raw.get("state")),
        epoch,
        raw.get("served") is True,
        raw.get("sure") is True,
        str(raw.get("reason", "")),
        raw.get("vip") is True,
    )


class ModuleRunner:
    def __init__(
        self,
        node: str,
        config: ModuleConfig,
        secret: bytes,
        secret_file: str,
        state_dir: str,
        *,
        verbose: bool = False,
    ) -> None:
        check_failover_timing(config)
        self.node = node
        self.config = config
        self.peer, peer_address = config.peer_of(node)
        self._secret = secret
        self._secret_file = secret_file
        self._state_dir = state_dir
        self._verbose = verbose
        self.policy = Policy(
            node,
            self.peer,
            default_primary=config.default_primary,
            maxloop=config.maxloop,
            loop_interval=config.loop_interval,
            on_too_many_failures=config.on_failure,
            witness=bool(config.witnesses),
        )
        self.module = Module()
        self.advertised = Module()
        self.directory = module_dir(state_dir, config.name)
        self.store = ModuleStore(self.directory)
        # next to the module's file: <config-dir>/modules/<name>/start_prim
        self.scripts = ScriptRunner(
            os.path.join(os.path.dirname(config.source), config.name),
            app_log(state_dir, config.name),
            config.name,
            node,
            timeout=config.script_timeout,
        )
        links = [Link("main", config.nodes[node], peer_address)]
        for index, network in enumerate(config.heartbeat_networks):
            links.append(Link(f"net{index + 1}", network[node], network[self.peer]))
        self.heartbeat = HeartbeatService(
            node,
            self.peer,
            secret,
            links,
            port=config.port,
            interval=config.heartbeat_interval,
            timeout=config.heartbeat_timeout,
            payload=self._news,
        )
        self.witnesses = [Witness(host, port) for host, port in config.witnesses]
        self.vip_held = False
        self._last_vip_change = ""
        self._vip_interface = config.vip_interface
        self._events_in, self._events_out = trio.open_memory_channel[
            tuple[Event, trio.MemorySendChannel[list[str]] | None]
        ](256)
        self._copy: trio.CancelScope | None = None
        self._copy_done = trio.Event()
        self._copy_done.set()
        self.receivers: list[Receiver] = []
        self._ready_mounts: list[trio.Process] = []
        self.peer_news: PeerNews | None = None
        self._peer_problem = ""
        # send times of the latest witness probe that was answered, and of one that was not
        self._witness_answered: float | None = None
        self._witness_unanswered: float | None = None
        self._witness_detail = ""

    # -- what the peer hears ------------------------------------------------------------------

    def _news(self) -> bytes:
        return encode_news(self.advertised, self.config.name, self.vip_held)

    def _advertise(self, module: Module) -> None:
        if module != self.advertised:
            self.advertised = module
            self.heartbeat.poke()

    # -- running --------------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._note(f"--- node {self.node} starts module {self.config.name}")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await nursery.start(self.heartbeat.run)
                await nursery.start(
                    serve_control,
                    module_socket(self._state_dir, self.config.name),
                    self._commands(),
                )
                if self.config.health_port is not None:
                    await nursery.start(
                        serve_health,
                        self.config.nodes[self.node],
                        self.config.health_port,
                        self.config.name,
                        self._serving,
                    )
                nursery.start_soon(self._watch)
                if self.witnesses:
                    nursery.start_soon(self._probe_witness)
                for checker in self.config.checkers:
                    nursery.start_soon(self._check, checker)
                await self._drop_stale_vip()
                await self._handle(self.store.start_event())
                task_status.started()
                async for event, reply in self._events_out:
                    answer = await self._handle(event)
                    if reply is not None:
                        await reply.send(answer)
            finally:
                # inside the nursery: the copy (shielded) stays mounted until stop_prim has run
                with trio.CancelScope(shield=True):
                    await self._handle(Stop(), why="the node stops")
                    await dismiss_ready_mounts(self._ready_mounts)
                    self.store.stopped(self.module)
                    self._note(f"--- node {self.node} stopped module {self.config.name}")

    def _serving(self, _: str) -> tuple[bool, str]:
        serving = self.advertised.state in SERVING
        return serving, f"{self.config.name} {self.advertised.state.value} on {self.node}"

    async def _handle(self, event: Event, why: str | None = None) -> list[str]:
        """One step: saved, logged, carried out. Returns the refusals, for the operator."""
        before = self.module
        after, actions = step(before, event, self.policy)
        if isinstance(event, Stop) and why:
            after = replace(after, reason=why)
        self.module = after
        self.store.save(after)
        if (after.state, after.reason) != (before.state, before.reason):
            self._note(f"{before.state.value} -> {after.state.value}: {after.reason}")
            log.info("module %s: %s (%s)", self.config.name, after.state.value, after.reason)
        refusals = []
        for action in actions:
            if isinstance(action, Refuse):
                refusals.append(action.why)
                continue
            try:
                await self._act(action)
            except Exception as exc:
                if isinstance(action, ServeCopy | ReceiveCopy):
                    # the VIP and start_prim must never follow a copy that is not mounted (the
                    # application would write past the mirror): end the node instead
                    self._note(f"{type(action).__name__} failed: {exc}; stopping")
                    raise CopyFailed(f"module {self.config.name}: {exc}") from exc
                # any other failed action must not leave the ones after it undone
                self._note(f"{type(action).__name__} failed: {exc}")
                log.exception("module %s: %s failed", self.config.name, type(action).__name__)
        self._advertise(self.module)
        await self._keep_mounts_ready()
        return refusals

    async def _keep_mounts_ready(self) -> None:
        """A node that may have to take over keeps its mount children started (a failover
        then does not wait for Python to start and import); one that serves or is stopped
        does not need them."""
        wanted = self.module.state in (State.SECOND, State.WAIT)
        if wanted and not self._ready_mounts:
            self._ready_mounts = await spawn_ready_mounts(
                self.node, self.config, self._secret_file, self._state_dir, self._verbose
            )
        elif not wanted and self._ready_mounts and self.module.state is State.STOP:
            ready, self._ready_mounts = self._ready_mounts, []
            await dismiss_ready_mounts(ready)

    async def _act(self, action: Action) -> None:
        match action:
            case RunScript(name=name):
                result = await self.scripts.run(
                    name, state=self.module.state.value, reason=self.module.reason
                )
                if result.ran:
                    self._note(result.describe())
                if not result.ok:
                    log.warning("module %s: %s", self.config.name, result.describe())
            case AcquireVip():
                await self._vip(acquire=True)
            case ReleaseVip():
                await self._vip(acquire=False)
            case ServeCopy():
                await self._release_copy()
                await self._start_copy(serve=True)
            case ReceiveCopy():
                await self._release_copy()
                await self._start_copy(serve=False)
            case ReleaseCopy():
                await self._release_copy()
            case KeepAside(why=why):
                await self._release_copy()
                await self._keep_aside(why)
            case AskPeerToServe():
                self.heartbeat.poke()  # the peer takes over once it hears this node stepped down
            case _:
                raise AssertionError(action)

    async def _vip(self, *, acquire: bool) -> None:
        if self.config.vip is None:
            return
        if self._vip_interface is None:
            address = self.config.nodes[self.node]
            self._vip_interface = await trio.to_thread.run_sync(vip_address.interface_of, address)
        change = vip_address.acquire if acquire else vip_address.release
        done = await trio.to_thread.run_sync(change, self._vip_interface, self.config.vip)
        self.vip_held = acquire
        self._last_vip_change = done
        if acquire or "was not on" not in done:
            self._note(done)

    async def _drop_stale_vip(self) -> None:
        """A node process that crashed (its host did not) left the address behind: the peer
        may hold it by now."""
        if self.config.vip is None:
            return
        try:
            await self._vip(acquire=False)
        except vip_address.VipError as exc:  # checked at start: a setting to fix, said so
            raise ConfigError(f"{self.config.source}: vip: {exc}") from None

    async def _start_copy(self, *, serve: bool) -> None:
        scope = trio.CancelScope()
        done = trio.Event()
        self.receivers = []

        async def run(task_status: trio.TaskStatus[None]) -> None:
            # shielded: only `_release_copy` ends a copy, after the scripts stopped the
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
                            task_status=task_status,
                        )
                    else:
                        await receive_copy(
                            self.node,
                            self.config,
                            self._secret,
                            self._state_dir,
                            self.receivers,
                            task_status=task_status,
                        )
            finally:
                done.set()

        self._copy, self._copy_done = scope, done
        await self._nursery.start(run)

    async def _release_copy(self) -> None:
        if self._copy is None:
            return
        leaving = self.advertised.state in SERVING
        self._copy.cancel()
        await self._copy_done.wait()
        self._copy = None
        self.receivers = []
        if leaving:
            # every acknowledged write is on the peer now: say so before anything else
            self._advertise(self.module)

    async def _keep_aside(self, why: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = os.path.join(self.directory, "aside", stamp)

        def copy_all() -> list[str]:
            os.makedirs(aside, exist_ok=True)
            kept = []
            for index, directory in enumerate(self.config.directories):
                target = os.path.join(aside, str(index))
                shutil.copytree(directory, target, symlinks=True)
                kept.append(f"{directory} -> {target}")
            with open(os.path.join(aside, "REPORT.txt"), "w") as report:
                report.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {why}\n")
                report.write(
                    "This node's copy as it was when it yielded, before the peer's copy replaced "
                    "it. Compare and merge what you need by hand.\n"
                )
                report.writelines(line + "\n" for line in kept)
            return kept

        kept = await trio.to_thread.run_sync(copy_all)
        self._note(f"split brain: this copy kept aside in {aside} ({'; '.join(kept)})")
        log.warning("module %s: %s; this copy kept aside in %s", self.config.name, why, aside)

    # -- the watcher: heartbeat and copy -> events ----------------------------------------------

    async def _watch(self) -> None:
        fed: tuple[PeerNews, State] | None = None
        lost_told = False
        fenced_at: float | None = None
        out_of_sync_since: float | None = None
        in_sync_told = False
        while True:
            await trio.sleep(WATCH_EVERY)
            verdict = self.heartbeat.current_verdict()
            if verdict is Verdict.LOST or self._isolated_while_serving():
                # a loop held up (a busy node) may not have read heartbeats already waiting in
                # the socket: let them in before believing the silence
                await trio.sleep(0.01)  # one pass of the I/O poll
                verdict = self.heartbeat.current_verdict()
            if not lost_told and self._isolated_while_serving():
                lost_told, fed = True, None
                fenced_at = self.heartbeat.last_heard
                self._note(
                    f"{self.peer} silent and the witness unreachable ({self._witness_detail}): "
                    "stepping down before the peer may take over"
                )
                await self._events_in.send((PeerLost(False), None))
            elif verdict in (Verdict.ALIVE, Verdict.DEGRADED):
                news = self._read_news()
                # after stepping down, only a heartbeat heard since counts as the peer's return
                if news is not None and self.heartbeat.last_heard != fenced_at:
                    lost_told = False
                    fenced_at = None
                    key = (news, self.module.state)
                    if key != fed:
                        fed = key
                        await self._events_in.send(
                            (PeerSeen(news.state, news.epoch, news.served, news.sure), None)
                        )
            elif verdict is Verdict.LOST and not lost_told:
                lost_told, fed = True, None
                self.peer_news = None
                await self._events_in.send((PeerLost(await self._ask_witness()), None))
            receiving = self.module.state is State.SECOND and self.receivers
            in_sync = bool(receiving) and all(r.in_sync for r in self.receivers)
            if in_sync:
                out_of_sync_since = None
                if not in_sync_told:
                    in_sync_told = True
                    await self._events_in.send((InSync(), None))
                continue
            in_sync_told = False
            if not receiving or not self.module.sure:
                out_of_sync_since = None
                continue
            now = trio.current_time()
            if out_of_sync_since is None:
                out_of_sync_since = now
            heard = self.heartbeat.last_heard
            news = self.peer_news
            if (
                heard is not None
                and heard > out_of_sync_since + BEHIND_GRACE
                and news is not None
                and news.state in SERVING
            ):
                why = (
                    f"the stream from {self.peer} ended while it lives on: it may acknowledge "
                    "writes this copy lacks; not up to date until the next resync"
                )
                await self._events_in.send((Behind(why), None))
                out_of_sync_since = None

    def _read_news(self) -> PeerNews | None:
        payload = self.heartbeat.peer_payload
        try:
            news = decode_news(payload, self.config.name)
        except (ValueError, KeyError) as exc:
            problem = str(exc)
            if problem != self._peer_problem:
                self._peer_problem = problem
                self._note(f"the peer's heartbeat news is unusable: {problem}")
                log.error("module %s: %s", self.config.name, problem)
            return None
        self._peer_problem = ""
        self.peer_news = news
        return news

    def _silence_began(self) -> float:
        """From when on a witness answer counts: a probe sent before the peer's last heartbeat
        (plus one interval, as the peer may have been cut off just before sending the next)
        says nothing about which side the partition left this node on."""
        heard = self.heartbeat.last_heard
        return (heard if heard is not None else -1e9) + self.config.heartbeat_interval

    def _isolated_while_serving(self) -> bool:
        if not self.witnesses or self.advertised.state not in SERVING:
            return False
        heard = self.heartbeat.last_heard
        if heard is None:
            return False
        silent = trio.current_time() - heard
        if silent < SELF_FENCE_AT * self.config.heartbeat_timeout:
            return False
        since = self._silence_began()
        answered = self._witness_answered is not None and self._witness_answered >= since
        unanswered = self._witness_unanswered is not None and self._witness_unanswered >= since
        return unanswered and not answered

    async def _probe_witness(self) -> None:
        while True:
            sent = trio.current_time()
            reachable, detail = await witness_reachable(self.witnesses, WITNESS_PROBE_TIMEOUT)
            if reachable:
                self._witness_answered = sent
            else:
                self._witness_unanswered = sent
            self._witness_detail = detail
            await trio.sleep(WITNESS_PROBE_EVERY)

    async def _ask_witness(self) -> bool | None:
        if not self.witnesses:
            self._note(f"{self.peer} lost; no witness configured")
            return None
        since = self._silence_began()
        if self._witness_answered is not None and self._witness_answered >= since:
            reachable, detail = True, self._witness_detail or "answered"
        else:  # no answer to a probe sent since the silence: ask once more, patiently
            reachable, detail = await witness_reachable(self.witnesses, WITNESS_TIMEOUT)
        self._note(
            f"{self.peer} lost; witness {'reachable' if reachable else 'unreachable'}: {detail}"
        )
        return reachable

    async def _check(self, config: CheckerConfig) -> None:
        while True:
            await trio.sleep(config.interval)
            if self.advertised.state not in SERVING:
                continue
            probe = await run_check(config)
            # a step down may have begun meanwhile: its stop_prim stops the application
            if probe.ok or SERVING.isdisjoint({self.advertised.state, self.module.state}):
                continue
            if self.module.state not in SERVING:
                continue
            self._note(f"checker {config.kind} {config.target}: {probe.detail}")
            await self._events_in.send((AppFailed(time.monotonic()), None))

    # -- the operator ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        news = self.peer_news
        return {
            "module": self.config.name,
            "node": self.node,
            "state": self.module.state.value,
            "reason": self.module.reason,
            "serving": self.module.state in SERVING,
            "up_to_date": self.module.sure,
            "epoch": self.module.epoch,
            "vip": self.config.vip,
            "vip_held": self.vip_held,
            "peer": {
                "node": self.peer,
                "heartbeat": self.heartbeat.status(),
                "state": news.state.value if news else None,
                "reason": news.reason if news else None,
                "vip_held": news.vip if news else None,
            },
        }

    async def _ask(self, event: Event) -> dict[str, Any]:
        reply_in, reply_out = trio.open_memory_channel[list[str]](1)
        await self._events_in.send((event, reply_in))
        refusals = await reply_out.receive()
        if refusals:
            raise ControlError("; ".join(refusals))
        return self.status()

    def _commands(self) -> dict[str, Handler]:
        async def state(_: dict[str, Any]) -> dict[str, Any]:
            return self.status()

        async def start(_: dict[str, Any]) -> dict[str, Any]:
            if self.module.state is not State.STOP:
                raise ControlError(f"already started ({self.module.state.value})")
            return await self._ask(self.store.start_event())

        async def stop(_: dict[str, Any]) -> dict[str, Any]:
            answer = await self._ask(Stop())
            self.store.stopped(self.module)
            return answer

        async def restart(_: dict[str, Any]) -> dict[str, Any]:
            await stop({})
            return await start({})

        async def prim(request: dict[str, Any]) -> dict[str, Any]:
            return await self._ask(Prim(force=request.get("force") is True))

        async def second(_: dict[str, Any]) -> dict[str, Any]:
            return await self._ask(Second())

        async def swap(_: dict[str, Any]) -> dict[str, Any]:
            return await self._ask(Swap())

        return {
            "state": state,
            "start": start,
            "stop": stop,
            "restart": restart,
            "prim": prim,
            "second": second,
            "swap": swap,
        }

    def _note(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            with open(module_log(self._state_dir, self.config.name), "a", encoding="utf-8") as out:
                out.write(f"{stamp} {text}\n")
        except OSError as exc:
            log.error("cannot write the module log: %s", exc.strerror)
