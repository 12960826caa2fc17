"""The one handshake both ends run over a fresh TCP stream, before the raw socket takes over.

Both sides send their HELLO at once, then their proof (`Connection` decides everything; this
only moves bytes). `authenticate` returns as soon as the peer has proved it holds the secret,
with whatever the same read brought after the proof; `expect` then reads on until a given kind
of event arrives (the primary waits for the secondary's PEER_STATE). A peer that refuses, closes
or sends garbage ends in `HandshakeFailed` with a reason worded for the log; the caller bounds
the whole exchange with its own deadline.
"""

from __future__ import annotations

from typing import TypeVar

import trio

from tandem.engine.protocol.connection import (
    Authenticated,
    Connection,
    ConnectionEvent,
    ConnectionFailed,
    ConnectionState,
    PeerError,
)

RECEIVE_SIZE = 1 << 16
_E = TypeVar("_E")


class HandshakeFailed(Exception):
    """The peer refused us, or we refused it; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ClosedDuringHandshake(HandshakeFailed):
    """The peer closed the connection before the handshake ended."""


async def authenticate(
    stream: trio.SocketStream, connection: Connection
) -> tuple[Authenticated, list[ConnectionEvent]]:
    """Run the handshake until the peer's proof checks out."""
    events = await _read(stream, connection)
    while True:
        for index, event in enumerate(events):
            if isinstance(event, Authenticated):
                return event, events[index + 1 :]
        events = await _read(stream, connection)


async def expect(
    stream: trio.SocketStream,
    connection: Connection,
    kind: type[_E],
    pending: list[ConnectionEvent],
) -> _E:
    """The first event of ``kind``, from ``pending`` (what came with the proof) or later reads;
    what we still owe the peer (our own proof) is sent first."""
    events = pending
    while True:
        for index, event in enumerate(events):
            if isinstance(event, kind):
                # what came after it in the same read must not be lost: a refusal or garbage
                # right behind the awaited frame ends the handshake all the same
                for later in events[index + 1 :]:
                    _refusal(later)
                return event
            _refusal(event)
        events = await _read(stream, connection)


async def _read(stream: trio.SocketStream, connection: Connection) -> list[ConnectionEvent]:
    if connection.state is ConnectionState.CLOSED:
        # refused already (the refusal was raised then): never wait on a dead connection
        raise HandshakeFailed("the connection was closed after a refusal")
    outgoing = connection.bytes_to_send()
    try:
        if outgoing:
            await stream.send_all(outgoing)
        data = await stream.receive_some(RECEIVE_SIZE)
    except (trio.BrokenResourceError, OSError):
        # a stranger that gives up often resets rather than closes: the same thing to us
        raise ClosedDuringHandshake("reset the connection during the handshake") from None
    if not data:
        raise ClosedDuringHandshake("closed the connection during the handshake")
    events = connection.receive(data)
    for event in events:
        if isinstance(event, Authenticated):
            break
        if isinstance(event, ConnectionFailed | PeerError):
            with trio.move_on_after(1):  # our ERROR frame, if we refused: the peer learns why
                await stream.send_all(connection.bytes_to_send())
        _refusal(event)
    return events


def _refusal(event: ConnectionEvent) -> None:
    if isinstance(event, ConnectionFailed):
        raise HandshakeFailed(event.reason)
    if isinstance(event, PeerError):
        raise HandshakeFailed(event.reason)
