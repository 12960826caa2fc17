"""The secondary's side of replication: accepts one authenticated primary at a time, applies its
mutations in sequence order to the local copy, and acknowledges them (received, applied, and in
durable mode durable). A mutation it cannot apply (disk full, copies diverged) is reported to the
primary, which then goes on alone: the copy is never left with a silent gap.

Each connection starts with a resync: the secondary first says where its copy stands (from its
journal directory: the generation it shares with a primary, the paths it changed itself), then
applies the stream *tolerantly* (what it cannot apply, it names back as UNSETTLED instead of
failing) and answers the primary's queries, until the primary's Finish finds nothing unsettled
left: the copy is then made durable, the new generation recorded, and applying becomes strict.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import trio

from tandem.engine.config.stream import StreamSettings
from tandem.engine.control.failures import leaves
from tandem.engine.protocol.connection import (
    MAX_FRAME,
    AckKind,
    AckWanted,
    Connection,
    ConnectionEvent,
    ConnectionFailed,
    ConnectionState,
    MutationReceived,
    PeerError,
    PeerState,
    Side,
)
from tandem.engine.protocol.handshake import (
    ClosedDuringHandshake,
    HandshakeFailed,
    authenticate,
)
from tandem.engine.protocol.items import StreamItem
from tandem.engine.protocol.keys import KeySource, keyring_of
from tandem.engine.protocol.queries import Finish, HashQuery, ListQuery, ProgressNote, Query
from tandem.engine.protocol.repairs import REPAIR_TYPES
from tandem.engine.protocol.results import encode_entries, encode_hashes
from tandem.engine.reintegration.journal import SecondaryJournal
from tandem.engine.reintegration.plan import plan_from_history
from tandem.engine.replica.aside import AsideKeeper, AsideShort, keep_aside
from tandem.engine.replica.durability import make_durable
from tandem.engine.replica.open_files import OpenFiles
from tandem.engine.replica.repair import apply_repair, apply_tolerantly
from tandem.engine.replica.replay import apply
from tandem.engine.replica.survey import hash_file_range, survey
from tandem.engine.replication.door import refuse, serve_door
from tandem.engine.replication.raw_socket import RawSocket
from tandem.engine.replication.strangers import Admission, RefusalLog
from tandem.fsdriver.mount import check_target, open_root
from tandem.fsdriver.mutation import Mutation, Write
from tandem.fsdriver.syscall import syncfs

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0


class ApplyError(Exception):
    pass


MAX_REPORTED_PATHS = 100_000  # beyond, the peer is told to compare everything
RESULT_PART = MAX_FRAME // 2
# what a peer may ask for in one hash query: the resync asks 4 KiB blocks of a few MiB; a
# block of 2^40 bytes once ended the session with ENOMEM
MAX_HASHES_PER_QUERY = 1 << 20
# UNHURRIED mutations (file data at the fsync sync point, D33) are acknowledged together: one
# frame each way saved per write, the primary's backlog still drained within milliseconds
ACK_DELAY = 0.005
OWED_ACK_ITEMS = 256
OWED_ACK_BYTES = 4 << 20
MIN_HASH_BLOCK, MAX_HASH_BLOCK = 512, 1 << 20


def _apply_batch(
    root_fd: int,
    batch: list[tuple[int, StreamItem]],
    durable: bool,
    tolerant: bool,
    files: OpenFiles,
    keeper: AsideKeeper | None = None,
) -> list[bytes]:
    """Apply in order; returns the paths a tolerant application could not settle. With a
    ``keeper``, what each item changes is kept aside first. Strict applies write through the
    descriptors `files` keeps; a resync's (repairs, tolerant) may move anything: they forget
    them first."""
    unsettled: list[bytes] = []
    if tolerant:
        files.forget()
    for seq, item in batch:
        try:
            if isinstance(item, ProgressNote):
                continue  # read when it arrived
            if keeper is not None:
                try:
                    keeper.before(item)
                except AsideShort as exc:
                    raise ApplyError(f"mutation {seq} not applied: {exc}") from None
            if isinstance(item, REPAIR_TYPES):
                files.forget()
                unsettled.extend(apply_repair(root_fd, item))
            elif tolerant:
                unsettled.extend(apply_tolerantly(root_fd, cast(Mutation, item)))
            else:
                apply(root_fd, cast(Mutation, item), files)  # queries never reach a batch
        except OSError as exc:
            what = type(item).__name__
            path = getattr(item, "path", getattr(item, "old", b"?"))
            if exc.errno in (errno.ELOOP, errno.EXDEV) and not tolerant:
                # the copies are equal here: a primary's own tree never leads a path through a
                # symlink of ours, so this stream is hostile or broken
                raise ApplyError(
                    f"refused mutation {seq} ({what} {path!r}): its path leads through a symlink "
                    "or out of the copy (protocol violation); nothing of it applied"
                ) from None
            name = errno.errorcode.get(exc.errno or 0, "error")
            raise ApplyError(
                f"cannot apply mutation {seq} ({what} {path!r}): {name} {exc.strerror}"
            ) from None
    if durable:
        make_durable(root_fd, [item for _, item in batch])
    return unsettled


def answer_query(root_fd: int, query: Query, version: int) -> bytes:
    match query:
        case ListQuery(path=path):
            return encode_entries(survey(root_fd, path), version)
        case HashQuery(path=path, offset=offset, length=length, block=block):
            if not MIN_HASH_BLOCK <= block <= MAX_HASH_BLOCK or (
                length // block > MAX_HASHES_PER_QUERY
            ):
                raise ApplyError(f"refused a hash query of {length} bytes in {block}-byte blocks")
            return encode_hashes(hash_file_range(root_fd, path, offset, length, block), version)
    raise TypeError(f"not a query: {query!r}")


class Receiver:
    def __init__(
        self,
        root_fd: int,
        settings: StreamSettings,
        secret: KeySource,
        *,
        journal: SecondaryJournal | None = None,
    ) -> None:
        self._handshake_timeout = settings.handshake_timeout
        self._admission = Admission()
        self._handshakes: dict[int, trio.CancelScope] = {}  # by admission ticket
        self._refusals = RefusalLog()
        self._journal = journal
        self.in_sync = False
        self._root_fd = root_fd
        self._files = OpenFiles(root_fd)  # the descriptors strict applies write through
        self.identity = settings.identity
        self._secret = secret
        self._durable = settings.durable
        self._current: tuple[trio.CancelScope, trio.Event] | None = None
        self.applied = 0  # mutations applied over this process's life (for status and tests)
        self._primary = ""  # the connected primary's node name
        self._progress: dict[str, object] | None = None  # the primary's last progress note
        self._progress_at = 0.0
        self._aside = settings.aside_dir
        self._aside_marker = settings.aside_marker
        self._kept_aside: tuple[str, tuple[bytes, ...]] | None = None
        self._keeper: AsideKeeper | None = None  # keeps what this resync changes (asked)

    def status(self) -> dict[str, object]:
        if self._current is None:
            replication = "waiting for the primary"
        else:
            replication = "in sync" if self.in_sync else "resyncing"
        resync = None
        if replication == "resyncing" and self._progress is not None:
            age = round(time.monotonic() - self._progress_at, 1)
            resync = {**self._progress, "reported_s_ago": age}
        return {
            "role": "secondary",
            "node": self.identity.node,
            "module": self.identity.stream,
            "peer": self._primary or None,
            "replication": replication,
            "resync": resync,
            "applied": self.applied,
        }

    def _note(self, note: ProgressNote) -> None:
        try:
            progress = json.loads(note.body)
        except ValueError:
            return  # a status line, not worth a session
        if isinstance(progress, dict):
            self._progress, self._progress_at = progress, time.monotonic()

    async def serve(
        self,
        host: str,
        port: int,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        log.info("waiting for the primary of %s on %s:%d", self.identity.stream, host, port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sum_up_strangers)

            def arrived(accepted: socket.socket, source: str) -> None:
                self._arrived(accepted, source, nursery)

            for listener in listeners:
                nursery.start_soon(serve_door, listener, arrived)
            task_status.started(listeners)

    def _arrived(self, accepted: socket.socket, source: str, handlers: trio.Nursery) -> None:
        """At the door (`tandem.engine.replication.door`): a place among the handshakes in
        progress, or a reset."""
        admitted = self._admission.admit(source)
        if admitted is None:
            refuse(accepted)
            self._stranger(
                logging.WARNING,
                "over the limit",
                "refused a connection: its address has as many handshakes in progress as it may",
                source,
            )
            return
        ticket, evicted = admitted
        for old in evicted:
            self._handshakes.pop(old).cancel()
        place = self._handshakes[ticket] = trio.CancelScope()
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(accepted))
        handlers.start_soon(self.handle, stream, source, ticket, place)

    async def _sum_up_strangers(self) -> None:
        while True:
            await trio.sleep(self._refusals.window)
            self._summarize_refusals()

    def _summarize_refusals(self) -> None:
        line = self._refusals.summary(time.monotonic())
        if line is not None:
            log.warning("%s", line)

    def _stranger(self, level: int, kind: str, message: str, source: str) -> None:
        """A connection that did not prove the secret: logged, or counted for the summary."""
        if self._refusals.record(time.monotonic(), kind, source):
            log.log(level, "%s (from %s)", message, source)
        self._summarize_refusals()

    async def _admitted_handshake(
        self,
        stream: trio.SocketStream,
        connection: Connection,
        source: str,
        ticket: int,
        place: trio.CancelScope,
    ) -> list[ConnectionEvent] | None:
        """The handshake, within its deadline and its place among the strangers
        (`tandem.engine.replication.strangers`): the events after the peer's proof, or None."""
        try:
            with place, trio.move_on_after(self._handshake_timeout) as waited:
                return await self._handshake(stream, connection, source)
            return None  # evicted, or out of time (said below)
        finally:
            self._admission.done(ticket)
            self._handshakes.pop(ticket, None)
            if place.cancelled_caught:
                self._stranger(
                    logging.WARNING,
                    "evicted",
                    "a handshake was ended to make room for newer ones (too many in progress)",
                    source,
                )
            elif waited.cancelled_caught:
                self._stranger(
                    logging.WARNING,
                    "too slow",
                    f"a peer did not complete the handshake within {self._handshake_timeout:g} s;"
                    " connection closed",
                    source,
                )

    async def handle(
        self, stream: trio.SocketStream, source: str, ticket: int, place: trio.CancelScope
    ) -> None:
        async with stream:
            connection = Connection(Side.RESPONDER, self.identity, keyring_of(self._secret))
            try:
                first_events = await self._admitted_handshake(
                    stream, connection, source, ticket, place
                )
                if first_events is None:
                    return
                await self._take_over()
                done = trio.Event()
                with trio.CancelScope() as scope, RawSocket(stream) as raw:
                    self._current = (scope, done)
                    try:
                        try:
                            self._keeper = await trio.to_thread.run_sync(self._asked_keeper)
                            standing = await self._where_the_copy_stands()
                        except AsideShort as exc:
                            log.error("%s", exc)
                            connection.send_error(str(exc))
                            await raw.send_all(connection.bytes_to_send())
                            return
                        connection.send_peer_state(standing)
                        await raw.send_all(connection.bytes_to_send())
                        if self._journal is not None:
                            self._journal.begin_receiving()
                        await self._session(raw, connection, first_events, scope)
                    finally:
                        self.in_sync = False
                        self._files.forget()  # the next session starts with a resync
                        with trio.CancelScope(shield=True):
                            await self._end_receiving()
                        done.set()
                        if self._current is not None and self._current[0] is scope:
                            self._current = None
                if scope.cancelled_caught:
                    log.info("the previous connection from the primary was closed")
            # whatever ends one connection (tasks below raise exception groups), the receiver
            # lives on for the next
            except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
                log.warning("connection from the primary lost: %s", leaves(group)[0])
            except* Exception as group:
                log.error("connection from the primary failed", exc_info=group)

    async def _handshake(
        self, stream: trio.SocketStream, connection: Connection, source: str
    ) -> list[ConnectionEvent] | None:
        """Authenticate the peer; returns the events that followed its proof, or None."""
        try:
            authenticated, pending = await authenticate(stream, connection)
        except ClosedDuringHandshake as exc:
            self._stranger(logging.INFO, "closed", f"a peer {exc}", source)
            return None
        except HandshakeFailed as exc:
            self._stranger(logging.ERROR, "refused", f"refused a peer: {exc.reason}", source)
            return None
        log.info(
            "primary %s connected (protocol %d)", authenticated.peer_node, authenticated.version
        )
        self._primary = authenticated.peer_node
        return pending

    async def _where_the_copy_stands(self) -> PeerState:
        if self._journal is None:
            return PeerState("", False, False, ())
        history = await trio.to_thread.run_sync(self._journal.history)
        if not history.complete:
            log.info("this copy's own changes are unknown (%s)", history.why_incomplete)
            return PeerState(history.generation, False, history.served_alone, ())
        paths = plan_from_history(history).paths()
        if len(paths) > MAX_REPORTED_PATHS:
            return PeerState(history.generation, False, history.served_alone, ())
        if paths:
            log.warning(
                "this copy changed %d path(s) since it last agreed with a primary%s; "
                "the primary's versions replace them",
                len(paths),
                " (it served alone meanwhile)" if history.served_alone else "",
            )
            await self._keep_own_changes(history.generation, paths, history.served_alone)
        return PeerState(history.generation, True, history.served_alone, tuple(paths))

    def _asked_keeper(self) -> AsideKeeper | None:
        if self._aside_marker is None or self._aside is None:
            return None
        label = self.identity.stream.replace("/", "-")
        keeper = AsideKeeper.resume(self._aside_marker, self._root_fd, self._aside, label)
        if keeper is not None:
            log.warning("what this resync changes is kept aside first, in %s", keeper.target)
        return keeper

    async def _keep_own_changes(self, generation: str, paths: list[bytes], alone: bool) -> None:
        """Writes this copy holds and the primary may lack are kept aside before they are
        replaced (once per set of changes: a connection that breaks mid-resync does not keep
        them twice). Raises AsideShort: then nothing is replaced."""
        if self._keeper is not None:
            return  # each path the resync changes is kept as it comes
        if self._aside is None:
            log.warning("no place to keep them aside (no journal directory): they are replaced")
            return
        key = (generation, tuple(paths))
        if key == self._kept_aside:
            return
        why = (
            f"{self.identity.stream}: this copy changed {len(paths)} path(s) since it last agreed "
            f"with the primary{' (it served alone meanwhile)' if alone else ''}"
        )
        label = self.identity.stream.replace("/", "-")
        target = await trio.to_thread.run_sync(
            keep_aside, self._root_fd, paths, self._aside, why, label
        )
        self._kept_aside = key
        log.warning("this copy's own changes kept aside in %s before they are replaced", target)

    async def _end_receiving(self) -> None:
        """Mark the copy cleanly left (trusted after a reboot) once what it holds is on disk."""
        if self._journal is None:
            return
        try:
            await trio.to_thread.run_sync(syncfs, self._root_fd)
            self._journal.end_receiving()
        except OSError as exc:
            log.warning("could not mark the copy cleanly left: %s", exc.strerror)

    def drop(self, why: str) -> None:
        """End the current session now: this copy was declared behind, and nothing that session
        still carries (a resync's end on its way) may make it up to date again. The primary's
        next connection starts with a resync."""
        self.in_sync = False
        if self._current is not None and not self._current[0].cancel_called:
            log.warning("connection from the primary dropped: %s", why)
            self._current[0].cancel()

    async def _take_over(self) -> None:
        """A primary that proved itself replaces one that went silent (a dead host leaves a
        half-open connection behind). The old session ends before the new one applies."""
        if self._current is None:
            return
        scope, done = self._current
        log.warning("a new connection from the primary replaces the previous one")
        scope.cancel()
        await done.wait()

    async def _session(
        self,
        raw: RawSocket,
        connection: Connection,
        events: list[ConnectionEvent],
        scope: trio.CancelScope,
    ) -> None:
        expected = 1
        tolerant = True  # until the resync is confirmed
        unsettled_sent = 0
        owed: _OwedAck | None = None  # UNHURRIED mutations applied, not acknowledged yet
        while True:
            failure = next((e for e in events if isinstance(e, ConnectionFailed | PeerError)), None)
            if failure is not None:
                # the stream is over, and the connection already closed: what arrived before
                # the bad frame in the same read stays unapplied and unacknowledged (the
                # primary resyncs it); only the ERROR goes out
                if isinstance(failure, ConnectionFailed):
                    log.error("the primary sent something invalid: %s", failure.reason)
                else:
                    log.warning("the primary ended replication: %s", failure.reason)
                with trio.move_on_after(1):
                    await raw.send_all(connection.bytes_to_send())
                return
            batch: list[tuple[int, StreamItem]] = []
            hurried = False  # something in this read waits for its acknowledgement
            for event in events:
                if isinstance(event, AckWanted):
                    hurried = True
                elif isinstance(event, MutationReceived):
                    if event.seq != expected:
                        # what came before it in this read stays unapplied (the primary
                        # resyncs it): the connection is over, only the ERROR goes out
                        connection.send_error(f"expected mutation {expected}, got {event.seq}")
                        log.error("out-of-order mutation %d (expected %d)", event.seq, expected)
                        with trio.move_on_after(1):
                            await raw.send_all(connection.bytes_to_send())
                        return
                    expected += 1
                    hurried = hurried or not event.unhurried
                    item = event.mutation
                    if isinstance(item, ProgressNote):
                        self._note(item)
                    if not isinstance(item, ListQuery | HashQuery | Finish):
                        batch.append((event.seq, item))
                        continue
                    # a query sees every mutation before it applied, and nothing after
                    sent = await self._apply(raw, connection, batch, tolerant)
                    if sent is None:
                        return
                    unsettled_sent += sent
                    batch = []
                    if isinstance(item, Finish):
                        finished = tolerant and item.unsettled == unsettled_sent
                        if finished:
                            await self._confirm(item.generation.decode(errors="replace"), scope)
                            tolerant = False
                        connection.send_result(
                            event.seq, b"\x01" if finished else b"\x00", final=True
                        )
                    else:
                        try:
                            body = await trio.to_thread.run_sync(
                                answer_query, self._root_fd, item, connection.agreed_version
                            )
                        except ApplyError as exc:
                            connection.send_error(str(exc))
                            await raw.send_all(connection.bytes_to_send())
                            return
                        for start in range(0, max(len(body), 1), RESULT_PART):
                            final = start + RESULT_PART >= len(body)
                            connection.send_result(
                                event.seq, body[start : start + RESULT_PART], final=final
                            )
                    self._acknowledge(connection, event.seq)
                    owed = None
                    await raw.send_all(connection.bytes_to_send())
            if batch:
                # no RECEIVED ack: it would leave only with the APPLIED one below (nothing is
                # sent while a batch is applied), and no primary waits for it; each ack is a
                # frame to seal and open (D26)
                sent = await self._apply(raw, connection, batch, tolerant)
                if sent is None:
                    return
                unsettled_sent += sent
                owed = owed or _OwedAck()
                owed.add(batch)
            if owed is not None and (hurried or owed.due()):
                self._acknowledge(connection, owed.seq)
                owed = None
            outgoing = connection.bytes_to_send()
            if outgoing:
                await raw.send_all(outgoing)
            if connection.state is ConnectionState.CLOSED:
                return
            if owed is not None:
                # acknowledged with the next mutation, or after a short while if none comes
                with trio.move_on_after(ACK_DELAY) as waited:
                    data = await raw.receive()
                if waited.cancelled_caught:
                    self._acknowledge(connection, owed.seq)
                    owed = None
                    await raw.send_all(connection.bytes_to_send())
                    data = await raw.receive()
            else:
                data = await raw.receive()
            if not data:
                log.info("the primary closed the connection")
                return
            events = connection.receive(data)

    async def _apply(
        self,
        raw: RawSocket,
        connection: Connection,
        batch: list[tuple[int, StreamItem]],
        tolerant: bool,
    ) -> int | None:
        """Apply a batch; returns how many UNSETTLED requests that took (0 or 1), None when it
        failed (the primary was told, the session ends)."""
        if not batch:
            return 0
        unsettled: list[bytes] = []
        try:
            if self._durable or tolerant:
                # syncfs and resync repairs can take long: keep the loop free (a new primary
                # may come)
                keeper = self._keeper if tolerant else None
                unsettled = await trio.to_thread.run_sync(
                    _apply_batch, self._root_fd, batch, self._durable, tolerant, self._files, keeper
                )
            else:
                # applying is a few syscalls per mutation: a thread hop would cost more than it
                # saves, and this connection has nothing else to do meanwhile
                _apply_batch(self._root_fd, batch, False, False, self._files)
        except ApplyError as exc:
            log.error("%s; the primary will go on alone", exc)
            connection.send_error(str(exc))
            await raw.send_all(connection.bytes_to_send())
            return None
        self.applied += len(batch)
        if not unsettled:
            return 0
        connection.send_unsettled(tuple(dict.fromkeys(unsettled)))
        return 1

    def _acknowledge(self, connection: Connection, seq: int) -> None:
        # the strongest kind only: a primary takes it for the weaker ones too
        connection.send_ack(AckKind.DURABLE if self._durable else AckKind.APPLIED, seq)

    async def _confirm(self, generation: str, session: trio.CancelScope) -> None:
        """The resync is over: the copy equals the primary's. Durable first, then said so.
        A session dropped meanwhile (`drop`) confirms nothing: this copy was declared behind."""
        await trio.to_thread.run_sync(syncfs, self._root_fd)
        if session.cancel_called:
            return
        if self._journal is not None:
            await trio.to_thread.run_sync(self._journal.adopt_generation, generation)
        if session.cancel_called:
            return
        if self._keeper is not None:
            target = await trio.to_thread.run_sync(self._keeper.finish)
            self._keeper = None
            log.warning("what the resync changed in this copy is kept aside in %s", target)
        self.in_sync = True
        log.info("this copy is up to date (generation %s)", generation)


class _OwedAck:
    """UNHURRIED mutations applied and not acknowledged yet: the primary waits for none of
    them, but its backlog (`MAX_BACKLOG`) waits for the acknowledgement, so it is owed for at
    most `ACK_DELAY`, `OWED_ACK_ITEMS` mutations or `OWED_ACK_BYTES` of data."""

    __slots__ = ("bytes", "items", "seq")

    def __init__(self) -> None:
        self.seq = 0
        self.items = 0
        self.bytes = 0

    def add(self, batch: list[tuple[int, StreamItem]]) -> None:
        self.seq = batch[-1][0]
        self.items += len(batch)
        self.bytes += sum(len(item.data) for _, item in batch if isinstance(item, Write))

    def due(self) -> bool:
        return self.items >= OWED_ACK_ITEMS or self.bytes >= OWED_ACK_BYTES


@contextmanager
def secondary_copy(directory: str) -> Iterator[int]:
    """The secondary's copy of ``directory``: a descriptor to apply through, while the path
    itself is read-only to applications."""
    path = check_target(directory)
    with open_root(path) as root_fd, read_only_in_place(path):
        yield root_fd


@contextmanager
def read_only_in_place(path: str) -> Iterator[None]:
    """Make ``path`` read-only to applications (a read-only bind mount over itself) while this
    process keeps writing through a descriptor opened before. Removed on exit."""
    subprocess.run(["mount", "--bind", path, path], check=True, capture_output=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", path], check=True, capture_output=True)
        yield
    finally:
        done = subprocess.run(["umount", path], capture_output=True)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", path], capture_output=True)
