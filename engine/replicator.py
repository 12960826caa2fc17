"""The primary's network `ReplicationSink`: each mutation gets the next sequence number, goes to
the peer over one pipelined connection, and its receipt completes when the peer acknowledges it
(applied or durable, per the module's mode). If the peer does not answer within the timeout the
replicator stops waiting, goes on alone and says why; it never hangs a writer forever.

Concurrency: `submit` is synchronous (the filesystem calls it inside its atomic step, so the
sequence order is the order changes hit the disk); only `Receipt.wait` awaits.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from tandem.fsdriver.mutation import DONE, Mutation, Receipt

from .wire import (
    AckKind,
    Acknowledged,
    Authenticated,
    Connection,
    ConnectionFailed,
    Identity,
    PeerError,
    Role,
)

log = logging.getLogger(__name__)

RECEIVE_SIZE = 1 << 16


@dataclass(frozen=True)
class PeerAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> PeerAddress:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{text!r} is not HOST:PORT")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class _AckReceipt:
    __slots__ = ("_replicator", "_seq")

    def __init__(self, replicator: Replicator, seq: int) -> None:
        self._replicator = replicator
        self._seq = seq

    async def wait(self) -> None:
        await self._replicator.wait_acknowledged(self._seq)


class Replicator:
    def __init__(
        self,
        peer: PeerAddress,
        identity: Identity,
        secret: bytes,
        *,
        ack: AckKind = AckKind.APPLIED,
        timeout: float = 10.0,
        on_alone: Callable[[str], None] | None = None,
        track_while_alone: Callable[[Mutation], None] | None = None,
    ) -> None:
        self.peer = peer
        self.identity = identity
        self._secret = secret
        self._ack_kind = ack
        self._timeout = timeout
        self._on_alone = on_alone
        self._track = track_while_alone
        self._next_seq = 1
        self._unsent: deque[tuple[int, Mutation]] = deque()
        self._in_flight: deque[tuple[int, Mutation]] = deque()  # sent, not yet acknowledged
        self._acked = 0
        self._progress = trio.Event()  # set (and replaced) whenever acks advance or state changes
        self._has_unsent = trio.Event()
        self.connected = False
        self.alone_reason: str | None = None

    # -- ReplicationSink --------------------------------------------------------------------

    def submit(self, mutation: Mutation) -> Receipt:
        if self.alone_reason is not None:
            if self._track is not None:
                self._track(mutation)
            return DONE
        seq = self._next_seq
        self._next_seq += 1
        self._unsent.append((seq, mutation))
        self._has_unsent.set()
        return _AckReceipt(self, seq)

    async def wait_acknowledged(self, seq: int) -> None:
        with trio.move_on_after(self._timeout) as waited:
            while self._acked < seq and self.alone_reason is None:
                await self._progress.wait()
        if waited.cancelled_caught:
            # the writer's clock and the handshake's run out together: name what really stalled
            stalled = "acknowledge" if self.connected else "complete the handshake"
            self.go_alone(f"peer {self.peer} did not {stalled} within {self._timeout:g} s")

    # -- state ------------------------------------------------------------------------------

    def go_alone(self, reason: str) -> None:
        if self.alone_reason is not None:
            return
        self.alone_reason = reason
        self.connected = False
        log.warning(
            "replication to %s stopped: %s; going on alone (changes are no longer mirrored)",
            self.peer,
            reason,
        )
        if self._track is not None:
            # what was submitted but never acknowledged must be resent on reintegration
            for _, mutation in (*self._in_flight, *self._unsent):
                self._track(mutation)
        self._in_flight.clear()
        self._unsent.clear()
        self._wake()
        if self._on_alone is not None:
            self._on_alone(reason)

    def _wake(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    @property
    def acknowledged(self) -> int:
        return self._acked

    # -- the connection task ----------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, authenticate, then stream mutations and collect acks until the peer is lost."""
        task_status.started()
        try:
            with trio.fail_after(self._timeout):
                stream = await trio.open_tcp_stream(self.peer.host, self.peer.port)
        except (OSError, trio.TooSlowError) as exc:
            self.go_alone(f"cannot reach peer {self.peer}: {exc or 'timed out'}")
            return
        async with stream:
            connection = Connection(Role.INITIATOR, self.identity, self._secret)
            try:
                await self._handshake(stream, connection)
                if self.alone_reason is not None:
                    return
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send_loop, stream, connection, nursery.cancel_scope)
                    nursery.start_soon(self._receive_loop, stream, connection, nursery.cancel_scope)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.go_alone(f"connection to {self.peer} lost: {exc}")

    async def _handshake(self, stream: trio.SocketStream, connection: Connection) -> None:
        with trio.move_on_after(self._timeout) as waited:
            while True:
                await stream.send_all(connection.bytes_to_send())
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    self.go_alone(f"peer {self.peer} closed the connection during the handshake")
                    return
                for event in connection.receive(data):
                    if isinstance(event, Authenticated):
                        await stream.send_all(connection.bytes_to_send())
                        self.connected = True
                        log.info(
                            "replicating %s to %s (node %s, protocol %d, %s)",
                            self.identity.module,
                            self.peer,
                            event.peer_node,
                            event.version,
                            event.features.name or "no options",
                        )
                        return
                    if isinstance(event, ConnectionFailed | PeerError):
                        await stream.send_all(connection.bytes_to_send())
                        self.go_alone(f"peer {self.peer} refused: {event.reason}")
                        return
        if waited.cancelled_caught:
            self.go_alone(
                f"peer {self.peer} did not complete the handshake within {self._timeout:g} s"
            )

    async def _send_loop(
        self, stream: trio.SocketStream, connection: Connection, scope: trio.CancelScope
    ) -> None:
        while self.alone_reason is None:
            await self._has_unsent.wait()
            self._has_unsent = trio.Event()
            # send everything queued so far in one write: pipelining, not one round trip each
            while self._unsent:
                seq, mutation = self._unsent.popleft()
                connection.send_mutation(seq, mutation)
                self._in_flight.append((seq, mutation))
            await stream.send_all(connection.bytes_to_send())
        scope.cancel()

    async def _receive_loop(
        self, stream: trio.SocketStream, connection: Connection, scope: trio.CancelScope
    ) -> None:
        while self.alone_reason is None:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                self.go_alone(f"peer {self.peer} closed the connection")
                break
            for event in connection.receive(data):
                if isinstance(event, Acknowledged):
                    if event.kind == self._ack_kind and event.seq > self._acked:
                        self._acked = event.seq
                        while self._in_flight and self._in_flight[0][0] <= event.seq:
                            self._in_flight.popleft()
                        self._wake()
                elif isinstance(event, PeerError | ConnectionFailed):
                    with trio.move_on_after(1):
                        await stream.send_all(connection.bytes_to_send())
                    self.go_alone(f"peer {self.peer} reported: {event.reason}")
                    break
        scope.cancel()
