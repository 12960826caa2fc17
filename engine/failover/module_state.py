"""A module's state on one node, as a pure function: ``step(module, event) -> (module, actions)``.

No I/O here: the node feeds events (the operator's commands, the heartbeat verdict and what the
peer says of itself, the witness probe, replication's progress, the checkers) and one executor
performs the actions in order (scripts, virtual IP, replication, read-only copy, keeping a split
brain's files aside). Every state carries a reason worded for the operator.

Which copy is newest: every period of serving has a number (an *epoch*, one more than any the
node has heard of); a copy holds ``(epoch, served)``: the last epoch whose writes it has, and
whether it served then (a server may have written alone after its secondary stopped hearing it).
The larger pair is the newer copy. ``sure`` says more: this copy may serve without seeing the
peer (it served last and stopped cleanly, or it was in sync when the primary vanished). A crash
forgets ``sure`` (the peer may have taken over since).

The rules users rely on:
- a node whose copy is not known to be up to date never serves by itself: it WAITs (the operator
  may force it: ``Prim(force=True)``);
- the primary lost → an up-to-date secondary serves (ALONE), unless it cannot reach the witness
  (it may be the isolated one); a primary that loses its peer *and* the witness stops serving;
- both starting cold → the newer copy; equal copies → the default primary;
- copies with no history (neither ever served, e.g. the first start, or state directories
  lost): the one that holds data serves; if both hold data, both WAIT for the operator to pick
  one (``Prim(force=True)`` on its node) — a copy with data and no history is never overwritten
  without being kept aside first (``KeepAside``);
- when both served (split brain), the configured winner keeps serving and the other yields, its
  divergent files kept aside (``KeepAside``), never silently overwritten;
- ``swap`` hands the role over only when the secondary is in sync;
- an application failing more than ``maxloop`` times in ``loop_interval`` seconds stops
  restarting: the module fails over (if the peer is in sync) or stops.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace


class State(enum.Enum):
    STOP = "STOP"
    WAIT = "WAIT"
    ALONE = "ALONE"
    PRIM = "PRIM"
    SECOND = "SECOND"


SERVING = frozenset({State.ALONE, State.PRIM})


@dataclass(frozen=True)
class Policy:
    node: str
    peer: str
    default_primary: str | None = None  # who serves when both start with up-to-date copies
    maxloop: int = 3  # application restarts allowed in loop_interval seconds
    loop_interval: float = 86400.0
    on_too_many_failures: str = "failover"  # or "stop"
    witness: bool = True  # a witness is configured (else partitions cannot be told apart)

    def preferred(self) -> str:
        """The node that serves when nothing else decides (and wins a split brain)."""
        return self.default_primary or min(self.node, self.peer)


@dataclass(frozen=True)
class Module:
    state: State = State.STOP
    reason: str = "stopped"
    epoch: int = 0
    served: bool = False  # this copy served during `epoch`
    sure: bool = False  # may serve without seeing the peer
    peer_state: State | None = None  # what the peer last said of itself (None: not heard)
    peer_epoch: int = 0
    peer_served: bool = False
    peer_sure: bool = False
    failures: tuple[float, ...] = field(default=())  # recent application failures (times)
    holds: bool = False  # this copy holds data (files), as found at start
    peer_holds: bool = False  # the peer's copy holds data

    @property
    def copy(self) -> tuple[int, bool]:
        return (self.epoch, self.served)

    @property
    def peer_copy(self) -> tuple[int, bool]:
        return (self.peer_epoch, self.peer_served)

    @property
    def no_history(self) -> bool:
        """This copy never served, nor followed a server (nothing says what it holds)."""
        return self.copy == (0, False)


# -- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """From this node's persistent state; ``sure`` only if the last run stopped cleanly."""

    epoch: int
    served: bool
    sure: bool
    holds: bool = False  # the copy holds data


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class PeerSeen:
    """What the peer says of itself (in its heartbeats)."""

    state: State
    epoch: int
    served: bool
    sure: bool
    holds: bool = False  # its copy holds data


@dataclass(frozen=True)
class PeerLost:
    witness_reachable: bool | None  # None: no witness configured


@dataclass(frozen=True)
class AsideFailed:
    """Keeping this copy aside before it follows failed (the disk is short): it must not be
    overwritten, so it waits."""

    why: str


@dataclass(frozen=True)
class InSync:
    """As secondary: the resync completed; this copy now holds everything."""


@dataclass(frozen=True)
class Behind:
    """Not serving: the serving peer may acknowledge writes this copy lacks (its stream ended
    while it lives on, or it asks to go on alone: ``answering`` names its requests), so this
    copy is no longer sure until the next resync completes."""

    why: str
    answering: tuple[str, ...] = ()


@dataclass(frozen=True)
class Prim:
    force: bool = False


@dataclass(frozen=True)
class Second:
    pass


@dataclass(frozen=True)
class Swap:
    pass


@dataclass(frozen=True)
class HandOver:
    """The peer stopped serving for a swap and asks this node to serve."""


@dataclass(frozen=True)
class AppFailed:
    now: float


ModuleEvent = (
    Start
    | Stop
    | PeerSeen
    | PeerLost
    | InSync
    | Behind
    | Prim
    | Second
    | Swap
    | HandOver
    | AppFailed
    | AsideFailed
)

# -- actions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunScript:
    name: str  # start_prim, stop_prim


@dataclass(frozen=True)
class AcquireVip:
    pass


@dataclass(frozen=True)
class ReleaseVip:
    pass


@dataclass(frozen=True)
class ServeCopy:
    """Mount the copy read-write through the replicating passthrough (mirroring to the peer
    whenever it is there, journaling always)."""


@dataclass(frozen=True)
class ReceiveCopy:
    """Stop serving the copy; make it read-only; receive the peer's stream (resync first)."""


@dataclass(frozen=True)
class ReleaseCopy:
    """Neither serve nor receive (unmount, stop receiving)."""


@dataclass(frozen=True)
class KeepAside:
    """Before receiving: move this copy's changes since the copies last agreed aside, with a
    report (split brain: this node yields)."""

    why: str


@dataclass(frozen=True)
class AskPeerToServe:
    pass


@dataclass(frozen=True)
class Refuse:
    """The command is not carried out; ``why`` is for the operator."""

    why: str


Action = (
    RunScript
    | AcquireVip
    | ReleaseVip
    | ServeCopy
    | ReceiveCopy
    | ReleaseCopy
    | KeepAside
    | AskPeerToServe
    | Refuse
)

_START_SERVING: tuple[Action, ...] = (ServeCopy(), AcquireVip(), RunScript("start_prim"))
_STOP_SERVING: tuple[Action, ...] = (RunScript("stop_prim"), ReleaseVip())


def step(module: Module, event: ModuleEvent, policy: Policy) -> tuple[Module, list[Action]]:
    state = module.state
    match event:
        case Start(epoch=epoch, served=served, sure=sure, holds=holds):
            if state is not State.STOP:
                return module, [Refuse(f"already started ({state.value}: {module.reason})")]
            started = replace(
                module, epoch=epoch, served=served, sure=sure, failures=(), holds=holds
            )
            return _go(started, State.WAIT, "started; looking for the peer")
        case Stop():
            return _stop(module)
        case PeerSeen(state=peer_state, epoch=epoch, served=served, sure=sure, holds=holds):
            seen = replace(
                module,
                peer_state=peer_state,
                peer_epoch=epoch,
                peer_served=served,
                peer_sure=sure,
                peer_holds=holds,
            )
            return _peer_seen(seen, policy)
        case PeerLost(witness_reachable=witness):
            return _peer_lost(replace(module, peer_state=None), witness)
        case InSync():
            if state is not State.SECOND:
                return module, []
            synced = replace(module, epoch=module.peer_epoch, served=False, sure=True)
            return _go(synced, State.SECOND, "in sync with the primary")
        case Behind(why=why):
            if state in SERVING or not module.sure:
                return module, []
            reason = why if state is State.SECOND else module.reason
            return _go(replace(module, sure=False), state, reason)
        case Prim(force=force):
            return _prim(module, force)
        case Second() | Swap():
            return _swap(module)
        case HandOver():
            if state is not State.SECOND or not module.sure:
                return module, [Refuse("not an up-to-date secondary: cannot take over")]
            return _serve(module, State.PRIM, "the peer handed the role over", [])
        case AppFailed(now=now):
            return _app_failed(module, now, policy)
        case AsideFailed(why=why):
            if state is not State.SECOND:
                return module, []
            return _go(module, State.WAIT, f"{why}; this copy is not overwritten", [ReleaseCopy()])
    raise AssertionError(event)


def _go(
    module: Module, state: State, reason: str, actions: tuple[Action, ...] | list[Action] = ()
) -> tuple[Module, list[Action]]:
    return replace(module, state=state, reason=reason), list(actions)


def _serve(
    module: Module, state: State, reason: str, before: list[Action]
) -> tuple[Module, list[Action]]:
    """Start serving: a new epoch, newer than any copy either node holds."""
    epoch = max(module.epoch, module.peer_epoch) + 1
    serving = replace(module, epoch=epoch, served=True, sure=True)
    return _go(serving, state, reason, [*before, *_START_SERVING])


def _stop(module: Module) -> tuple[Module, list[Action]]:
    state = module.state
    if state is State.STOP:
        return module, []
    actions = [*(_STOP_SERVING if state in SERVING else ()), ReleaseCopy()]
    # an up-to-date secondary takes over when this node stops serving, and a primary goes on
    # without a secondary that stops: either way this copy is no longer sure to be the newest
    # (whenever the peer is there: it may have become an up-to-date secondary since its last
    # heartbeat)
    handing_over = state in SERVING and module.peer_state is not None
    stopped = replace(module, sure=module.sure and not handing_over and state is not State.SECOND)
    return _go(stopped, State.STOP, "stopped by the operator", actions)


def _peer_seen(module: Module, policy: Policy) -> tuple[Module, list[Action]]:
    state, peer = module.state, module.peer_state
    if state is State.STOP:
        return module, []
    if peer in SERVING:
        if state in SERVING:
            return _split_brain(module, policy)
        if state is State.WAIT:
            waiting = replace(module, sure=False)
            if module.no_history and module.holds:
                # nothing says this copy's data is older: it is kept before it is replaced
                why = (
                    "the peer serves; this copy held data of its own (no served history): "
                    "kept aside, then resynced from the peer"
                )
                return _go(waiting, State.SECOND, why, [KeepAside(why), ReceiveCopy()])
            reason = "the peer serves; resyncing this copy from it"
            return _go(waiting, State.SECOND, reason, [ReceiveCopy()])
        return module, []  # SECOND already receives
    if state in SERVING:
        if peer is State.SECOND:
            following = "in sync" if module.peer_sure else "resyncing"
            return _go(module, State.PRIM, f"serving; {policy.peer} follows ({following})")
        return _go(module, State.PRIM, f"serving; {policy.peer} is {peer.value if peer else '?'}")
    # neither serves: the newer copy does (a secondary that is sure takes over at once)
    if state is State.SECOND and module.sure:
        reason = f"{policy.peer} stopped serving; took over"
        return _serve(module, State.ALONE, reason, [ReleaseCopy()])
    if _both_unknown_with_data(module):
        return _go(
            module,
            State.WAIT,
            "neither copy has served and both hold data: pick the one to keep with "
            "`tandem prim --force MODULE` on its node (the other is kept aside, then resynced)",
        )
    if _newer_here(module, policy):
        before: list[Action] = [ReleaseCopy()] if state is State.SECOND else []
        return _serve(module, State.PRIM, "this copy is the newer one: serving", before)
    if state is State.SECOND:
        # keep receiving: the peer is about to serve (a swap) or will be told to
        return _go(module, State.SECOND, f"waiting for {policy.peer} to serve")
    return _go(module, State.WAIT, f"waiting for {policy.peer} (its copy is newer) to serve")


def _both_unknown_with_data(module: Module) -> bool:
    return (
        module.no_history
        and module.peer_copy == (0, False)
        and module.holds
        and module.peer_holds
        and not module.sure
        and not module.peer_sure
    )


def _newer_here(module: Module, policy: Policy) -> bool:
    if module.peer_sure != module.sure:
        return module.sure
    if module.copy != module.peer_copy:
        return module.copy > module.peer_copy
    if module.no_history and module.holds != module.peer_holds:
        return module.holds  # of two copies with no history, the one with data
    return policy.preferred() == policy.node


def _split_brain(module: Module, policy: Policy) -> tuple[Module, list[Action]]:
    if policy.preferred() == policy.node:
        return _go(module, State.PRIM, "split brain healed: both served; this node keeps serving")
    why = f"split brain: both nodes served; {policy.peer} keeps serving, this node yields"
    actions: list[Action] = [*_STOP_SERVING, KeepAside(why), ReceiveCopy()]
    return _go(replace(module, sure=False), State.SECOND, why, actions)


def _peer_lost(module: Module, witness: bool | None) -> tuple[Module, list[Action]]:
    state = module.state
    isolated = witness is False
    if state in SERVING:
        if isolated:
            # the peer may be serving now: this copy is no longer sure to be the newest. The
            # VIP goes first: the peer takes it over within the rest of the heartbeat timeout,
            # however long stop_prim takes (a planned step down stops the application first)
            return _go(
                replace(module, sure=False),
                State.WAIT,
                "the peer and the witness are unreachable: this node may be the isolated one; "
                "stopped serving",
                [ReleaseVip(), RunScript("stop_prim"), ReleaseCopy()],
            )
        return _go(module, State.ALONE, "the peer was lost; serving alone")
    if state in (State.SECOND, State.WAIT):
        release: list[Action] = [ReleaseCopy()] if state is State.SECOND else []
        if isolated:
            reason = "the peer and the witness are unreachable"
            return _go(replace(module, sure=False), State.WAIT, reason, release)
        if not module.sure:
            return _go(
                module,
                State.WAIT,
                "the peer is unreachable and this copy is not known to be up to date "
                "(`tandem prim --force` to serve it anyway)",
                release,
            )
        return _serve(module, State.ALONE, "the peer was lost; took over", release)
    return module, []


def _prim(module: Module, force: bool) -> tuple[Module, list[Action]]:
    state = module.state
    if state in SERVING:
        return module, []
    if state is State.STOP:
        return module, [Refuse("the module is stopped (`tandem start` first)")]
    if module.peer_state in SERVING:
        return module, [Refuse("the peer serves: use `tandem swap` to move the role here")]
    if not module.sure and not force:
        return module, [
            Refuse(
                "this copy is not known to be up to date; `tandem prim --force` serves it "
                "anyway (writes the peer acknowledged after this copy fell behind are lost)"
            )
        ]
    reason = "forced to serve by the operator" if force else "made primary by the operator"
    return _serve(module, State.ALONE, reason, [ReleaseCopy()] if state is State.SECOND else [])


def _swap(module: Module) -> tuple[Module, list[Action]]:
    if module.state not in SERVING:
        return module, [Refuse(f"this node does not serve ({module.state.value})")]
    if module.peer_state is not State.SECOND or not module.peer_sure:
        return module, [Refuse("the peer is not an up-to-date secondary: nothing to swap with")]
    # ReceiveCopy unmounts first, which drains the stream: every acknowledged write is on the
    # peer before it is asked to serve
    actions: list[Action] = [*_STOP_SERVING, ReceiveCopy(), AskPeerToServe()]
    return _go(replace(module, sure=False), State.SECOND, "swapped: the peer serves", actions)


def _app_failed(module: Module, now: float, policy: Policy) -> tuple[Module, list[Action]]:
    if module.state not in SERVING:
        return module, []
    recent = (*(t for t in module.failures if now - t < policy.loop_interval), now)
    module = replace(module, failures=recent)
    if len(recent) <= policy.maxloop:
        reason = f"application restarted ({len(recent)} of {policy.maxloop} in the interval)"
        return _go(module, module.state, reason, [RunScript("stop_prim"), RunScript("start_prim")])
    too_many = f"the application failed {len(recent)} times in {policy.loop_interval:g} s"
    if policy.on_too_many_failures == "failover" and (
        module.peer_state is State.SECOND and module.peer_sure
    ):
        actions: list[Action] = [*_STOP_SERVING, ReceiveCopy(), AskPeerToServe()]
        reason = f"{too_many}; failed over to {policy.peer}"
        return _go(replace(module, sure=False), State.SECOND, reason, actions)
    stopped = replace(module, failures=())
    return _go(stopped, State.STOP, f"{too_many}; stopped", [*_STOP_SERVING, ReleaseCopy()])
