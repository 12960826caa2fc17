"""The primary's network `ReplicationSink`: each mutation gets the next sequence number, goes to
the peer over one pipelined connection, and its receipt completes when the peer acknowledges it
(applied or durable, per the module's mode). If the peer does not answer within the timeout the
replicator stops waiting, goes on alone and says why; it never hangs a writer forever.

Every connection starts with a resync (`tandem.engine.reintegration.resync`): from the step the
connection is ready, new mutations are mirrored at once, but their receipts do not wait for the
peer (its copy is not up to date yet; the journal keeps naming them) until the peer confirms the
resync. Then the connection is "in sync" and receipts wait for acknowledgements again. A lost
peer is reconnected every ``retry`` seconds, for as long as the mount lives.

The sync point (D33): at ``write`` (the default) every change's receipt waits for its own
acknowledgement. At ``fsync`` a data write's receipt waits only for room in the backlog; the
next `Sync` (fsync, fdatasync, fsyncdir) or `settle` (an O_SYNC write) waits for its own
acknowledgement, and acknowledgements are cumulative: for everything before it.

Concurrency: `submit` is synchronous (the filesystem calls it inside its atomic step, so the
sequence order is the order changes hit the disk) and hands the frame to the socket right there
(`RawSocket.send_soon`: no task switch before it leaves); only `Receipt.wait` awaits.
"""

from __future__ import annotations

import errno
import json
import logging
import time
import uuid
from collections import deque

import trio

from tandem.engine.config.stream import PeerAddress, StreamSettings
from tandem.engine.control.failures import leaves
from tandem.engine.protocol.connection import (
    FIRST_ALLOCATE_VERSION,
    PROTOCOL_VERSION,
    Acknowledged,
    Connection,
    ConnectionEvent,
    ConnectionFailed,
    PeerError,
    PeerState,
    QueryAnswered,
    Side,
    UnsettledPaths,
)
from tandem.engine.protocol.handshake import (
    ClosedDuringHandshake,
    HandshakeFailed,
    authenticate,
    expect,
)
from tandem.engine.protocol.items import StreamItem
from tandem.engine.protocol.keys import KeySource, keyring_of
from tandem.engine.protocol.queries import Finish, ProgressNote, Query
from tandem.engine.reintegration.journal import ChangeJournal
from tandem.engine.reintegration.policy import choose_plan
from tandem.engine.reintegration.resync import PeerRefused, Resync
from tandem.engine.reintegration.verify import Verify, log_report
from tandem.engine.replication.latency import LatencyHistogram
from tandem.engine.replication.raw_socket import RawSocket
from tandem.fsdriver.mutation import DONE, Allocate, Mutation, Receipt, Write

# what returns once sent under the fsync sync point: file data, which a local disk also holds
# only in its cache until fsync; names, attributes and syncs wait for the peer as ever (D33)
BUFFERED_AT_FSYNC_POINT = (Write, Allocate)

log = logging.getLogger(__name__)

MAX_BACKLOG = 64 << 20  # unacknowledged bytes in flight while receipts do not wait for acks
# the largest answer a query may get (a listing of a directory of millions of entries fits)
MAX_ANSWER_BYTES = 512 << 20
CHECKPOINT_INTERVAL = 1.0  # how often journal segments close (and retire once acknowledged)
PROGRESS_INTERVAL = 1.0  # how often a resync tells the secondary how far it is


class _Lost(Exception):
    """The connection ended while something waited on it."""


class Refused(Exception):
    """An operator's request that cannot be carried out now (worded for the operator)."""


class _AckReceipt:
    __slots__ = ("_connection_number", "_replicator", "_seq", "_syncs")

    def __init__(
        self, replicator: Replicator, connection_number: int, seq: int, syncs: int
    ) -> None:
        self._replicator = replicator
        self._connection_number = connection_number
        self._seq = seq
        self._syncs = syncs

    async def wait(self) -> None:
        await self._replicator.wait_acknowledged(self._connection_number, self._seq, self._syncs)


class _PermitReceipt:
    """Out of sync and not permitted to go on alone: wait for the node's decision (or for a
    resync that brings the write to the peer), then, during a resync, for room."""

    __slots__ = ("_replicator", "_room", "_syncs")

    def __init__(self, replicator: Replicator, syncs: int, room: bool) -> None:
        self._replicator = replicator
        self._syncs = syncs
        self._room = room

    async def wait(self) -> None:
        if await self._replicator.wait_permitted(self._syncs) and self._room:
            try:
                await self._replicator.room()
            except _Lost:
                pass


class _RefusedReceipt:
    """A fenced node acknowledges nothing alone: the application gets EIO (the change may be
    on this copy; it was never promised)."""

    __slots__ = ()

    async def wait(self) -> None:
        raise OSError(errno.EIO, "not acknowledged: this node is stepping down")


_REFUSED = _RefusedReceipt()


class _RoomReceipt:
    """During a resync: wait only while the connection's backlog is full (bounded memory)."""

    __slots__ = ("_replicator",)

    def __init__(self, replicator: Replicator) -> None:
        self._replicator = replicator

    async def wait(self) -> None:
        try:
            await self._replicator.room()
        except _Lost:
            pass


def _weight(item: StreamItem) -> int:
    return len(item.data) + 64 if isinstance(item, Write) else 64


class Replicator:
    def __init__(
        self,
        settings: StreamSettings,
        secret: KeySource,
        *,
        root_fd: int | None = None,
        journal: ChangeJournal | None = None,
    ) -> None:
        if settings.peer is None:
            raise ValueError("a replicator needs the peer's address")
        self.peer: PeerAddress = settings.peer
        self.identity = settings.identity
        self._secret = secret
        self._ack_kind = settings.ack
        self._writes_buffered = settings.sync == "fsync"
        self._timeout = settings.peer_timeout
        self._retry = settings.retry
        self._root_fd = root_fd
        self._journal = journal
        self._bandwidth = settings.resync_bandwidth
        self._connection_number = 0
        self._next_seq = 1
        self._link: tuple[Connection, RawSocket] | None = None  # while mirroring
        # (seq, weight, when sent) sent, not acknowledged
        self._in_flight: deque[tuple[int, int, float]] = deque()
        self.ack_latency = LatencyHistogram()
        self._last_heard = time.monotonic()  # when the peer last said anything
        self._backlog = 0
        self._acked = 0
        self._answers: dict[int, tuple[list[bytes], trio.Event]] = {}
        self._answer_bytes: dict[int, int] = {}  # by query: how much of its answer arrived
        self._progress = trio.Event()  # set (and replaced) whenever acks advance or state changes
        self._connection_scope: trio.CancelScope | None = None
        self._resync: Resync | None = None
        self._verify: Verify | None = None
        self._last_verify: dict[str, object] | None = None
        self._last_resync: dict[str, object] | None = None
        self._full_requested = ""  # why the next resync must compare everything
        self._reconnect_now = trio.Event()
        self.connected = False
        self.in_sync = False
        self.alone_reason: str | None = "not connected to the peer yet"
        self.fenced = False  # stepping down: acknowledge nothing alone (`fence`)
        self.writes_waiting = 0  # application requests held until the peer acknowledges
        self._needs_permission = settings.alone_needs_permission
        self._permitted = not self._needs_permission  # may acknowledge without the peer
        self._episode = 1  # the current time out of sync (permission is given for one)
        self._syncs = 0  # resyncs completed: a write submitted before one is on the peer
        self._asking_changed = trio.Event()
        self._asking_changes = 0  # counts what `asking_now` may say differently
        self._waiting = 0  # writes waiting for the node's permission
        self._undecided_told = 0  # the episode whose undecided writes were last logged
        self._finishing = False  # a resync's Finish is out: the peer may be up to date now
        self._instance = uuid.uuid4().hex[:8]  # names this mount's requests to the peer
        self.resync_how = ""  # how the last resync compared (for the log, status and tests)

    # -- ReplicationSink --------------------------------------------------------------------

    def accepts(self, kind: type) -> bool:
        """Whether a mutation of this kind can reach the peer: an ALLOCATE needs protocol 6
        (a peer of the last release is answered EOPNOTSUPP instead, as before)."""
        return kind is not Allocate or self.version >= FIRST_ALLOCATE_VERSION

    def submit(self, mutation: Mutation) -> Receipt:
        if self.alone_reason is not None:
            return self._receipt_alone()
        buffered = self._writes_buffered and isinstance(mutation, BUFFERED_AT_FSYNC_POINT)
        seq = self._enqueue(mutation, unhurried=buffered)
        if self._verify is not None:
            self._verify.observe(mutation)
        if self._resync is not None:
            self._resync.observe(mutation)
        if buffered:
            # sent, in order; the next fsync (or `settle`) waits for it
            return _RoomReceipt(self)
        return self._receipt_through(seq)

    def settle(self) -> Receipt:
        """Completes once the peer holds every change submitted so far, as an fsync's `Sync`
        would: what an O_SYNC/O_DSYNC write waits for under the fsync sync point. At the write
        sync point each change's own receipt already waited for it."""
        if not self._writes_buffered:
            return DONE
        if self.alone_reason is not None:
            return self._receipt_alone()
        if self._link is not None:
            # the peer may be holding back the acknowledgement of UNHURRIED writes: not now
            connection, raw = self._link
            connection.send_ack_now()
            raw.send_soon(connection.bytes_to_send())
        return self._receipt_through(self._next_seq - 1)

    def _receipt_alone(self) -> Receipt:
        if self.fenced:
            return _REFUSED
        return DONE if self._permitted else _PermitReceipt(self, self._syncs, room=False)

    def _receipt_through(self, seq: int) -> Receipt:
        """What a change with sequence number ``seq``, connected, waits for: its (cumulative)
        acknowledgement in sync; during a resync room, or the node's permission."""
        if self._resync is not None:
            if self._permitted:
                return _RoomReceipt(self)
            return _PermitReceipt(self, self._syncs, room=True)
        return _AckReceipt(self, self._connection_number, seq, self._syncs)

    def _enqueue(self, item: StreamItem, unhurried: bool = False) -> int:
        """``unhurried``: nothing waits for this item's own acknowledgement, so the peer may
        fold it into a later one (one frame less each way per buffered write)."""
        seq = self._next_seq
        self._next_seq += 1
        if self._link is not None:  # None only once alone: the item is not mirrored
            connection, raw = self._link
            connection.send_mutation(seq, item, unhurried)
            raw.send_soon(connection.bytes_to_send())
            weight = _weight(item)
            self._in_flight.append((seq, weight, time.monotonic()))
            self._backlog += weight
        return seq

    async def wait_acknowledged(self, connection_number: int, seq: int, syncs: int) -> None:
        with trio.move_on_after(self._timeout) as waited:
            self.writes_waiting += 1
            try:
                while (
                    self._connection_number == connection_number
                    and self._acked < seq
                    and self.alone_reason is None
                ):
                    await self._progress.wait()
            finally:
                self.writes_waiting -= 1
        if waited.cancelled_caught:
            self.go_alone(f"peer {self.peer} did not acknowledge within {self._timeout:g} s")
        if self._connection_number == connection_number and self._acked >= seq:
            return
        if self.fenced and self._syncs == syncs:
            raise OSError(errno.EIO, "not acknowledged: this node is stepping down")
        await self.wait_permitted(syncs)

    async def wait_permitted(self, syncs: int) -> bool:
        """Until this write may be acknowledged: the node permits going on alone, or a resync
        completed since (the write is on the peer). EIO when fenced, or when no decision came
        within the peer timeout. True if permitted rather than resynced."""
        episode = self._episode
        with trio.move_on_after(self._timeout) as waited:
            if not self._decided(syncs):
                # a write waits: only now is the node asked (a stream that breaks while nothing
                # waits leaves the peer up to date, and it may still take over)
                self._waiting += 1
                if self._waiting == 1:
                    self._asking_may_change()
                try:
                    while not self._decided(syncs):
                        await self._progress.wait()
                finally:
                    self._waiting -= 1
                    if self._waiting == 0:
                        self._asking_may_change()
        if self._syncs > syncs:
            return False
        if self.fenced:
            raise OSError(errno.EIO, "not acknowledged: this node is stepping down")
        if waited.cancelled_caught:
            if self._undecided_told != episode:
                self._undecided_told = episode
                log.error(
                    "writes fail with EIO: %s may hold a copy up to date without them, and no "
                    "decision to go on alone came within %g s (%s)",
                    self.peer,
                    self._timeout,
                    self.alone_reason or "resyncing",
                )
            raise OSError(errno.EIO, "not acknowledged: the peer may serve without this write")
        return True

    def _decided(self, syncs: int) -> bool:
        return self._permitted or self._syncs > syncs or self.fenced

    async def room(self) -> None:
        connection_number = self._connection_number
        with trio.move_on_after(self._timeout) as waited:
            while self._backlog > MAX_BACKLOG and self._connection_number == connection_number:
                if self.alone_reason is not None:
                    raise _Lost
                await self._progress.wait()
        if waited.cancelled_caught:
            self.go_alone(f"peer {self.peer} did not acknowledge within {self._timeout:g} s")
        if self.alone_reason is not None or self._connection_number != connection_number:
            raise _Lost

    async def ask(self, query: Query) -> bytes:
        if self.alone_reason is not None:
            raise _Lost
        seq = self._enqueue(query)
        parts: list[bytes] = []
        answered = trio.Event()
        self._answers[seq] = (parts, answered)
        await answered.wait()
        if self.alone_reason is not None:
            raise _Lost
        return b"".join(parts)

    # -- state ------------------------------------------------------------------------------

    def go_alone(self, reason: str) -> None:
        if self.alone_reason is not None:
            return
        self.alone_reason = reason
        self.connected = False
        self.in_sync = False
        if self._needs_permission and not self._permitted:
            log.warning(
                "replication to %s stopped: %s; changes are journalled, and a write the peer "
                "lacks waits for the node's decision to go on alone",
                self.peer,
                reason,
            )
        else:
            log.warning(
                "replication to %s stopped: %s; going on alone (changes are no longer mirrored)",
                self.peer,
                reason,
            )
        self._link = None
        self._in_flight.clear()
        self._backlog = 0
        self._resync = None
        if self._finishing:  # the peer may count itself up to date: decide afresh
            self._finishing = False
            self._end_episode()
        for _, answered in self._answers.values():
            answered.set()
        self._answers.clear()
        self._answer_bytes.clear()
        if self._journal is not None:
            self._journal.go_alone(reason)
        self._wake()
        self._asking_may_change()
        if self._connection_scope is not None:
            self._connection_scope.cancel()

    def fence(self) -> str:
        """The node is stepping down: from now on nothing is acknowledged without the peer.
        A write the peer acknowledges still completes (a swap drains normally); one it does
        not, and every write once alone, fails with EIO instead of being acknowledged alone."""
        if not self.fenced:
            self.fenced = True
            log.warning(
                "fenced: this node steps down; no write is acknowledged without %s", self.peer
            )
            self._wake()
        return "fenced: nothing is acknowledged without the peer any more"

    def _wake(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    # -- going on alone, as the node decides ---------------------------------------------------

    @property
    def asking(self) -> bool:
        """Writes wait for the node's permission to acknowledge them without the peer."""
        return (
            self._waiting > 0 and not self._permitted and not self.in_sync and not self._finishing
        )

    @property
    def acknowledging_alone(self) -> bool:
        """Permitted, and out of sync: writes are acknowledged without the peer right now (for
        the operator: `asking` on the control socket, `tandem state`)."""
        return self._needs_permission and self._permitted and not self.in_sync

    def asking_now(self) -> dict[str, object]:
        return {
            "asking": self.asking,
            "alone": self.acknowledging_alone,
            "episode": self._episode,
            "request": f"{self._instance}.{self._episode}",
            "reason": self.alone_reason or "resyncing",
            "changes": self._asking_changes,
        }

    async def asking_changes(self, seen: int, within: float) -> dict[str, object]:
        """What `asking_now` says, once it changed since the caller's ``seen`` (its
        ``changes``), or after ``within`` seconds: the node follows its mount this way,
        without polling."""
        with trio.move_on_after(within):
            while self._asking_changes == seen:
                await self._asking_changed.wait()
        return self.asking_now()

    def _asking_may_change(self) -> None:
        self._asking_changes += 1
        self._asking_changed.set()
        self._asking_changed = trio.Event()

    async def finish(self, query: Finish) -> bytes:
        """Ask the peer to end the resync. From the moment it handles the question it may count
        itself up to date, so nothing is acknowledged alone until it answers: "not finished"
        gives the permission back, "finished" puts the copies in sync, a lost connection ends
        the episode (the node must decide afresh)."""
        permitted = self._permitted
        self._permitted = not self._needs_permission
        self._finishing = True
        answer = await self.ask(query)  # lost: `go_alone` ended the episode
        if answer == b"\x00":
            self._finishing = False
            self._permitted = permitted
        elif answer != b"\x01":
            self._finishing = False
            self._end_episode()
        # finished: still finishing until the resync task puts the copies in sync
        self._wake()
        self._asking_may_change()
        return answer

    def _end_episode(self) -> None:
        """In sync again: the next time out of sync asks afresh."""
        self._episode += 1
        self._permitted = not self._needs_permission

    def permit(self, episode: int, why: str) -> str:
        """The node's decision: the peer cannot serve without this copy's changes, so writes
        may be acknowledged alone until the copies are in sync again."""
        if self._permitted:
            return "already permitted"
        if episode != self._episode or self.in_sync or self._finishing:
            return f"episode {episode} is over (now {self._episode}): nothing to permit"
        self._permitted = True
        log.warning("going on alone without %s: %s", self.peer, why)
        self._wake()
        self._asking_may_change()
        return "permitted: writes are acknowledged without the peer until it is in sync"

    @property
    def acknowledged(self) -> int:
        return self._acked

    @property
    def version(self) -> int:
        """The protocol version of the current connection (the newest one, between them)."""
        if self._link is None:
            return PROTOCOL_VERSION
        return self._link[0].agreed_version

    # -- what an operator may ask -----------------------------------------------------------

    def status(self) -> dict[str, object]:
        if self.in_sync:
            replication = "in sync"
        elif self._resync is not None:
            replication = "resyncing"
        else:
            replication = "alone"
        resync = None
        if self._resync is not None:
            resync = {"how": self.resync_how, **self._resync.progress.as_dict()}
        verify = self._verify.report.as_dict() if self._verify is not None else None
        return {
            "role": "primary",
            "node": self.identity.node,
            "module": self.identity.stream,
            "peer": str(self.peer),
            "replication": replication,
            "sync": "fsync" if self._writes_buffered else "write",
            "reason": self.alone_reason,
            "resync": resync,
            "last_resync": self._last_resync,
            "full_resync_pending": bool(self._full_requested),
            "verify": verify if verify is not None else self._last_verify,
            "acknowledged": self._acked,
            "writes_waiting": self.writes_waiting,
            "in_flight": len(self._in_flight),
            "in_flight_bytes": self._backlog,
            "ack_latency": self.ack_latency.as_dict(),
            "fenced": self.fenced,
            "asking": self.asking,
            "acknowledging_alone": self.acknowledging_alone,
        }

    def request_full_resync(self, why: str = "requested by the operator") -> str:
        """Compare everything: now if connected (the connection starts over), else at the next
        connection. What it says is for the operator."""
        self._full_requested = why
        log.info("full resync %s", why)
        if self.connected:
            self.go_alone(f"full resync {why}; reconnecting")
            self._reconnect_now.set()
            return "the connection starts over with a full comparison"
        self._reconnect_now.set()
        return f"not connected ({self.alone_reason}); the next connection compares everything"

    async def verify(self) -> dict[str, object]:
        """Compare both copies block by block, changing nothing; the report (as a dict)."""
        if self._root_fd is None:
            raise Refused("this mount has no copy to read (no backing directory)")
        if not self.in_sync:
            state = "resyncing" if self._resync is not None else f"alone: {self.alone_reason}"
            raise Refused(f"the copies are not in sync yet ({state}); verify once they are")
        if self._verify is not None:
            raise Refused("a verify is already running")
        verify = Verify(self._root_fd, _Channel(self))
        self._verify = verify
        log.info("verify with %s started", self.peer)
        try:
            report = await verify.run()
        except _Lost:
            raise Refused(
                f"the connection to the peer ended during the verify ({self.alone_reason})"
            ) from None
        finally:
            self._verify = None
            self._last_verify = verify.report.as_dict()
        return log_report(report)

    # -- the connection task ----------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, resync, mirror; after a loss, reconnect every ``retry`` seconds."""
        task_status.started()
        async with trio.open_nursery() as nursery:
            if self._journal is not None:
                nursery.start_soon(self._checkpoints)
            if self._writes_buffered:
                nursery.start_soon(self._watch_acknowledgements)
            while True:
                await self._connect_once()
                with trio.move_on_after(self._retry):
                    await self._reconnect_now.wait()
                self._reconnect_now = trio.Event()

    async def _checkpoints(self) -> None:
        assert self._journal is not None
        while True:
            await trio.sleep(CHECKPOINT_INTERVAL)
            if self.in_sync:
                # every record in a closed segment belongs to a mutation submitted by now
                self._journal.checkpoint(self._next_seq - 1)
                self._journal.retire(self._acked)

    async def _watch_acknowledgements(self) -> None:
        """At the fsync sync point a writer does not wait for its acknowledgement, so a silent
        peer is noticed here: owing acknowledgements and silent for the timeout, it is lost
        (at the write sync point the waiting writer's own timeout says so)."""
        while True:
            await trio.sleep(min(1.0, self._timeout / 4))
            # a peer answering a resync's query says nothing until its answer is ready (a big
            # directory listed, a big file hashed): busy, not silent, as at the write point
            if self._in_flight and self.alone_reason is None and not self._answers:
                silent_since = max(self._in_flight[0][2], self._last_heard)
                if time.monotonic() - silent_since > self._timeout:
                    self.go_alone(
                        f"peer {self.peer} did not acknowledge within {self._timeout:g} s"
                    )

    async def _connect_once(self) -> None:
        try:
            with trio.fail_after(self._timeout):
                stream = await trio.open_tcp_stream(self.peer.host, self.peer.port)
        except (OSError, trio.TooSlowError) as exc:
            self._still_alone(f"cannot reach peer {self.peer}: {str(exc) or 'timed out'}")
            return
        async with stream:
            connection = Connection(Side.INITIATOR, self.identity, keyring_of(self._secret))
            try:
                with trio.fail_after(self._timeout):
                    peer = await self._handshake(stream, connection)
            except trio.TooSlowError:
                self._still_alone(f"peer {self.peer} did not complete the handshake")
                return
            except ClosedDuringHandshake as exc:
                self._still_alone(f"peer {self.peer} {exc}")
                return
            except HandshakeFailed as exc:
                self._still_alone(f"peer {self.peer} refused: {exc.reason}")
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._still_alone(f"connection to {self.peer} lost during the handshake: {exc}")
                return
            except Exception as exc:  # a bug, not the peer: the mount must outlive it
                log.error("handshake with %s failed", self.peer, exc_info=exc)
                self._still_alone(f"handshake with {self.peer} failed: {exc!r}")
                return
            # The connection's tasks run in a nursery: what ends it arrives as an exception
            # group. Whatever it is, the mount goes on (alone, journalled) and reconnects.
            try:
                with RawSocket(stream) as raw:
                    await self._mirror(raw, connection, peer)
            except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
                self.go_alone(f"connection to {self.peer} lost: {leaves(group)[0]}")
            except* Exception as group:
                unexpected = [leaf for leaf in leaves(group) if not isinstance(leaf, _Lost)]
                if unexpected:  # a bug, not the peer: said loudly, and the mount lives on
                    log.error("replication to %s failed", self.peer, exc_info=group)
                    self.go_alone(f"replication to {self.peer} failed: {unexpected[0]!r}")
            finally:
                self._connection_scope = None
                self.go_alone(f"connection to {self.peer} ended")

    def _still_alone(self, reason: str) -> None:
        if self.alone_reason != reason:
            log.info("replication to %s: %s; retrying every %g s", self.peer, reason, self._retry)
        self.alone_reason = reason

    async def _handshake(self, stream: trio.SocketStream, connection: Connection) -> PeerState:
        """The peer's state once it proved itself."""
        authenticated, pending = await authenticate(stream, connection)
        peer = await expect(stream, connection, PeerState, pending)
        log.info(
            "connected to %s (node %s, protocol %d, %s)",
            self.peer,
            authenticated.peer_node,
            authenticated.version,
            authenticated.features.name or "no options",
        )
        return peer

    async def _mirror(self, raw: RawSocket, connection: Connection, peer: PeerState) -> None:
        # one step: from here on, every mutation is mirrored, and the journal's sync point says
        # that what it recorded before is the resync's to settle
        self._connection_number += 1
        self._next_seq, self._acked = 1, 0
        raw.send_soon(connection.bytes_to_send())
        self._link = (connection, raw)
        self._in_flight.clear()
        self._backlog = 0
        self.alone_reason = None
        self.connected = True
        token = self._journal.sync_point() if self._journal is not None else None
        generation = uuid.uuid4().hex
        resync = Resync(
            self._root_fd if self._root_fd is not None else -1,
            _Channel(self),
            generation,
            bandwidth=self._bandwidth,
        )
        self._resync = resync
        async with trio.open_nursery() as nursery:
            self._connection_scope = nursery.cancel_scope
            nursery.start_soon(raw.flush_forever)
            nursery.start_soon(self._receive_loop, raw, connection)
            nursery.start_soon(self._resync_task, resync, peer, token)

    async def _resync_task(self, resync: Resync, peer: PeerState, token: int | None) -> None:
        # whatever stops the resync, the mount lives on; a cancellation (the connection ended
        # meanwhile) travels on beside it, so the failure is split off with except*
        failure: BaseException | None = None
        try:
            plan, how = await choose_plan(self._journal, self._full_requested, peer, token)
            if self.alone_reason is not None:
                return  # the connection ended while the plan was drawn
            resync.adopt(plan)
            self.resync_how = how
            log.info("resync with %s started: %s", self.peer, how)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._tell_progress, resync)
                progress = await resync.run()
                nursery.cancel_scope.cancel()
        except* Exception as group:
            failure = group
        if failure is not None:
            self._resync_failed(failure)
            return
        if self.alone_reason is not None:
            return  # the connection ended as the answer came: the next one resyncs again
        label = self._next_seq - 1
        if self._journal is not None and token is not None:
            self._journal.resynced(token, label, resync.generation)
        self._resync = None
        self.in_sync = True
        self._syncs += 1
        self._finishing = False
        self._end_episode()
        self._wake()
        self._asking_may_change()
        self._full_requested = ""
        summary = progress.as_dict()
        self._last_resync = {"how": self.resync_how, "finished_at": time.time(), **summary}
        log.info(
            "resync with %s done in %.2f s: %d paths, %d bytes compared, %d bytes sent",
            self.peer,
            summary["elapsed_s"],
            summary["paths_done"],
            summary["bytes_compared"],
            summary["bytes_sent"],
        )
        log.info("replicating %s to %s (in sync)", self.identity.stream, self.peer)

    async def _tell_progress(self, resync: Resync) -> None:
        """The returning node shows the resync's progress too (`tandem state` there)."""
        while self.alone_reason is None:
            note = {"how": self.resync_how, **resync.progress.as_dict()}
            self._enqueue(ProgressNote(json.dumps(note).encode()))
            await trio.sleep(PROGRESS_INTERVAL)

    def _resync_failed(self, exc: BaseException) -> None:
        found = leaves(exc)
        if all(isinstance(leaf, _Lost) for leaf in found):
            return  # the connection went first; go_alone said why
        refused = [leaf for leaf in found if isinstance(leaf, PeerRefused)]
        if refused:
            self.go_alone(str(refused[0]))
            return
        log.error("resync with %s failed", self.peer, exc_info=exc)
        self.go_alone(f"resync failed: {next(x for x in found if not isinstance(x, _Lost))!r}")

    async def _receive_loop(self, raw: RawSocket, connection: Connection) -> None:
        while True:
            data = await raw.receive()
            if not data:
                self.go_alone(f"peer {self.peer} closed the connection")
                return
            for event in connection.receive(data):
                if not self._handle(event):
                    raw.send_soon(connection.bytes_to_send())
                    with trio.move_on_after(1):
                        await raw.flush()
                    return

    def _handle(self, event: ConnectionEvent) -> bool:
        self._last_heard = time.monotonic()
        if isinstance(event, Acknowledged):
            # a stronger kind covers a weaker one (durable implies applied): a secondary sends
            # only the strongest it reached, one sealed frame per batch
            if event.kind >= self._ack_kind and event.seq > self._acked:
                self._acked = event.seq
                now = self._last_heard
                while self._in_flight and self._in_flight[0][0] <= event.seq:
                    _, weight, sent = self._in_flight.popleft()
                    self._backlog -= weight
                    self.ack_latency.observe(now - sent)
                self._wake()
        elif isinstance(event, QueryAnswered):
            waiting = self._answers.get(event.seq)
            if waiting is not None:
                waiting[0].append(event.body)
                self._answer_bytes[event.seq] = self._answer_bytes.get(event.seq, 0) + len(
                    event.body
                )
                if self._answer_bytes[event.seq] > MAX_ANSWER_BYTES:
                    # a peer that proved the secret may still be broken or compromised: its
                    # answers cannot take the primary's memory
                    self.go_alone(
                        f"peer {self.peer} answered query {event.seq} with more than "
                        f"{MAX_ANSWER_BYTES >> 20} MiB (protocol violation)"
                    )
                    return False
                if event.final:
                    del self._answers[event.seq]
                    self._answer_bytes.pop(event.seq, None)
                    waiting[1].set()
        elif isinstance(event, UnsettledPaths):
            if self._resync is not None:
                self._resync.unsettled(event.paths)
            else:
                self.go_alone(f"peer {self.peer} diverged outside a resync")
                return False
        elif isinstance(event, PeerError | ConnectionFailed):
            self.go_alone(f"peer {self.peer} reported: {event.reason}")
            return False
        return True


class _Channel:
    """The replicator as the resync sees it: its items are not application mutations."""

    def __init__(self, replicator: Replicator) -> None:
        self._replicator = replicator

    def submit(self, item: StreamItem) -> int:
        if self._replicator.alone_reason is not None:
            raise _Lost
        return self._replicator._enqueue(item)

    async def ask(self, query: Query) -> bytes:
        if isinstance(query, Finish):
            return await self._replicator.finish(query)
        return await self._replicator.ask(query)

    async def room(self) -> None:
        await self._replicator.room()

    @property
    def version(self) -> int:
        return self._replicator.version
