"""The secondary's side of replication: accepts one authenticated primary at a time, applies its
mutations in sequence order to the local copy, and acknowledges them (received, applied, and in
durable mode durable). A mutation it cannot apply (disk full, copies diverged) is reported to the
primary, which then goes on alone: the copy is never left with a silent gap.
"""

from __future__ import annotations

import errno
import logging
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from tandem.fsdriver.mount import check_target, open_root
from tandem.fsdriver.mutation import Mutation
from tandem.fsdriver.replay import apply
from tandem.fsdriver.syscall import syncfs

from .replicator import RECEIVE_SIZE
from .wire import (
    AckKind,
    Authenticated,
    Connection,
    ConnectionFailed,
    Event,
    Identity,
    MutationReceived,
    PeerError,
    Role,
    State,
)

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0


class ApplyError(Exception):
    pass


def _apply_batch(root_fd: int, batch: list[tuple[int, Mutation]], durable: bool) -> None:
    for seq, mutation in batch:
        try:
            apply(root_fd, mutation)
        except OSError as exc:
            what = type(mutation).__name__
            path = getattr(mutation, "path", getattr(mutation, "old", b"?"))
            name = errno.errorcode.get(exc.errno or 0, "error")
            raise ApplyError(
                f"cannot apply mutation {seq} ({what} {path!r}): {name} {exc.strerror}"
            ) from None
    if durable:
        syncfs(root_fd)


class Receiver:
    def __init__(
        self,
        root_fd: int,
        identity: Identity,
        secret: bytes,
        *,
        durable: bool,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self._handshake_timeout = handshake_timeout
        self._root_fd = root_fd
        self.identity = identity
        self._secret = secret
        self._durable = durable
        self._current: tuple[trio.CancelScope, trio.Event] | None = None
        self.applied = 0  # mutations applied over this process's life (for status and tests)

    async def serve(
        self,
        host: str,
        port: int,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        log.info("waiting for the primary of %s on %s:%d", self.identity.module, host, port)
        await trio.serve_listeners(self.handle, listeners, task_status=task_status)

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            connection = Connection(Role.RESPONDER, self.identity, self._secret)
            try:
                with trio.move_on_after(self._handshake_timeout) as waited:
                    first_events = await self._handshake(stream, connection)
                if waited.cancelled_caught:
                    log.warning(
                        "a peer did not complete the handshake within %g s; connection closed",
                        self._handshake_timeout,
                    )
                    return
                if first_events is None:
                    return
                await self._take_over()
                done = trio.Event()
                with trio.CancelScope() as scope:
                    self._current = (scope, done)
                    try:
                        await self._session(stream, connection, first_events)
                    finally:
                        done.set()
                        if self._current is not None and self._current[0] is scope:
                            self._current = None
                if scope.cancelled_caught:
                    log.info("the previous connection from the primary was closed")
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                log.warning("connection from the primary lost: %s", exc)

    async def _handshake(
        self, stream: trio.SocketStream, connection: Connection
    ) -> list[Event] | None:
        """Authenticate the peer; returns the events that followed its proof, or None."""
        while True:
            outgoing = connection.bytes_to_send()
            if outgoing:
                await stream.send_all(outgoing)
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                log.info("a peer closed the connection during the handshake")
                return None
            events = connection.receive(data)
            for index, event in enumerate(events):
                if isinstance(event, Authenticated):
                    log.info("primary %s connected (protocol %d)", event.peer_node, event.version)
                    return events[index + 1 :]
                if isinstance(event, ConnectionFailed | PeerError):
                    log.error("refused a peer: %s", event.reason)
                    with trio.move_on_after(1):
                        await stream.send_all(connection.bytes_to_send())
                    return None

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
        self, stream: trio.SocketStream, connection: Connection, events: list[Event]
    ) -> None:
        expected = 1
        while True:
            batch: list[tuple[int, Mutation]] = []
            for event in events:
                if isinstance(event, MutationReceived):
                    if event.seq != expected:
                        connection.send_error(f"expected mutation {expected}, got {event.seq}")
                        log.error("out-of-order mutation %d (expected %d)", event.seq, expected)
                        break
                    expected += 1
                    batch.append((event.seq, event.mutation))
                elif isinstance(event, ConnectionFailed):
                    log.error("the primary sent something invalid: %s", event.reason)
                elif isinstance(event, PeerError):
                    log.warning("the primary ended replication: %s", event.reason)
            if batch:
                last = batch[-1][0]
                connection.send_ack(AckKind.RECEIVED, last)
                try:
                    if self._durable:
                        # syncfs can take long: keep the loop free (a new primary may come)
                        await trio.to_thread.run_sync(_apply_batch, self._root_fd, batch, True)
                    else:
                        # applying is a few syscalls per mutation: a thread hop would cost more
                        # than it saves, and this connection has nothing else to do meanwhile
                        _apply_batch(self._root_fd, batch, False)
                except ApplyError as exc:
                    log.error("%s; the primary will go on alone", exc)
                    connection.send_error(str(exc))
                    await stream.send_all(connection.bytes_to_send())
                    return
                self.applied += len(batch)
                connection.send_ack(AckKind.APPLIED, last)
                if self._durable:
                    connection.send_ack(AckKind.DURABLE, last)
            outgoing = connection.bytes_to_send()
            if outgoing:
                await stream.send_all(outgoing)
            if connection.state is State.CLOSED:
                return
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                log.info("the primary closed the connection")
                return
            events = connection.receive(data)


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
