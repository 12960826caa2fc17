"""A replication connection's socket, driven directly rather than through trio's socket stream.

Why (decision D22 in docs/architecture.md): trio's `send_all` and `receive_some` each yield to
the scheduler around every call, even when the call would not block. A replicated write crosses
the socket four times (primary sends, secondary receives, secondary acknowledges, primary
receives), so those passes were a large share of the write's latency on a small machine.
Here a send is a plain non-blocking ``send`` made in the caller's own step (from the FUSE
handler that produced the mutation), and a receive yields only when nothing has arrived.

Bytes a send could not hand to the kernel at once wait in order in ``_pending`` and are flushed
by `flush` (one task), so the stream's byte order is the order of `send_soon` calls. They wait
as views, never moved: a megabyte frame drains in many partial sends, and moving the rest down
after each one cost more than sending it.
"""

from __future__ import annotations

import os
import socket
from collections import deque

import trio

RECEIVE_BUFFER = 1 << 20
_YIELD_EVERY = 16  # receives in a row without waiting before giving other tasks a turn


class RawSocket:
    def __init__(self, stream: trio.SocketStream) -> None:
        # a duplicate descriptor of the same connection: the stream keeps owning the original
        self._sock = socket.socket(fileno=os.dup(stream.socket.fileno()))
        self._sock.setblocking(False)
        self._pending: deque[memoryview] = deque()
        self._has_pending = trio.Event()
        # the flusher task and a task sending a last error frame may both flush; trio allows one
        # task at a time to wait for the socket to drain
        self._flushing = trio.Lock()
        self._error: OSError | None = None
        self._buffer = bytearray(RECEIVE_BUFFER)
        self._view = memoryview(self._buffer)
        self._received_in_a_row = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RawSocket:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- sending ----------------------------------------------------------------------------

    def send_soon(self, data: bytes | bytearray) -> None:
        """Send now what the kernel takes; the rest goes out with `flush`. Never raises (it
        runs inside a filesystem handler's step): a failure surfaces from `flush`."""
        if not data or self._error is not None:
            return
        if self._pending:
            self._pending.append(memoryview(data))
            return
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._error = exc
            self._has_pending.set()
            return
        if sent < len(data):
            self._pending.append(memoryview(data)[sent:])
            self._has_pending.set()

    async def flush_forever(self) -> None:
        """Flush whatever `send_soon` left behind, as the socket drains; raises OSError when
        the connection fails."""
        while True:
            await self._has_pending.wait()
            self._has_pending = trio.Event()
            await self.flush()

    async def flush(self) -> None:
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        while True:
            if self._error is not None:
                raise self._error
            if not self._pending:
                return
            await trio.lowlevel.wait_writable(self._sock)
            while self._pending:
                try:
                    sent = self._sock.send(self._pending[0])
                except BlockingIOError:
                    break
                except OSError as exc:
                    self._error = exc
                    raise
                if sent < len(self._pending[0]):
                    self._pending[0] = self._pending[0][sent:]
                    break
                self._pending.popleft()

    async def send_all(self, data: bytes | bytearray) -> None:
        self.send_soon(data)
        await self.flush()

    # -- receiving --------------------------------------------------------------------------

    async def receive(self) -> memoryview:
        """What arrived (valid until the next call); empty when the peer closed."""
        if self._received_in_a_row >= _YIELD_EVERY:
            self._received_in_a_row = 0
            await trio.lowlevel.checkpoint()
        while True:
            try:
                size = self._sock.recv_into(self._buffer)
            except BlockingIOError:
                self._received_in_a_row = 0
                await trio.lowlevel.wait_readable(self._sock)
                continue
            self._received_in_a_row += 1
            return self._view[:size]
