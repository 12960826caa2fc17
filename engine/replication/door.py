"""The receiver's listening sockets, drained as fast as the kernel fills them.

A connection the kernel has set up waits in the listen queue until it is accepted; when the
queue is full the kernel drops new SYNs, the primary's among them, and the primary cannot get
back in while a flood lasts (seen in CI: 60,000 strangers in 10 s kept it out for 30 s). So the
door accepts in batches without a task or a checkpoint per connection and lets its caller decide
each connection on the spot; a stranger refused there costs a few microseconds, less than it
costs the flooder to make it.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import Callable

import trio

log = logging.getLogger(__name__)

ACCEPT_BATCH = 512  # then other tasks run: the stream must not wait behind a flood
# the process or the system is short of something: wait for it instead of spinning
SHORT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
RESOURCE_PAUSE = 0.1


def refuse(connection: socket.socket) -> None:
    """Close at once with a reset: no TIME_WAIT kept here for a stranger."""
    try:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already reset by the peer: closing is all there is to do
    connection.close()


async def serve_door(
    listener: trio.SocketListener, arrived: Callable[[socket.socket, str], None]
) -> None:
    """Accept every connection queued on `listener`, and close it when done (as
    `trio.serve_listeners` does); `arrived(connection, source address)` decides each at once,
    without blocking: it takes the socket or refuses it."""
    async with listener:
        with socket.socket(fileno=os.dup(listener.socket.fileno())) as door:
            door.setblocking(False)
            await _drain(door, arrived)


async def _drain(door: socket.socket, arrived: Callable[[socket.socket, str], None]) -> None:
    short = False  # said once, not every pause
    while True:
        await trio.lowlevel.wait_readable(door)  # a checkpoint: other tasks run between batches
        for _ in range(ACCEPT_BATCH):
            try:
                connection, address = door.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno not in SHORT_OF_RESOURCES:
                    continue  # that one connection is gone (reset before it was accepted)
                if not short:
                    log.error("cannot accept connections: %s; retrying", exc.strerror)
                short = True
                await trio.sleep(RESOURCE_PAUSE)
                break
            if short:
                log.info("accepting connections again")
            short = False
            arrived(connection, str(address[0]))
