"""The replication socket driven without trio's stream: bytes leave in the order they were
handed over, even when the kernel takes them in pieces, and any task may flush."""

from __future__ import annotations

import os

import trio

from tandem.engine.replication.raw_socket import RawSocket


def test_bytes_keep_their_order_and_two_tasks_may_flush_at_once() -> None:
    chunks = [os.urandom(size) for size in (3 << 20, 10, 1 << 20, 5)]  # more than a socket holds
    expected = b"".join(chunks)

    async def scenario() -> None:
        left, right = trio.socket.socketpair()
        sender_stream, receiver_stream = trio.SocketStream(left), trio.SocketStream(right)
        received = bytearray()
        with RawSocket(sender_stream) as sender, RawSocket(receiver_stream) as receiver:
            for chunk in chunks:
                sender.send_soon(chunk)  # never blocks: what the kernel refuses waits in order

            async def drain() -> None:
                while len(received) < len(expected):
                    received.extend(await receiver.receive())

            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sender.flush)  # e.g. the flusher task
                    nursery.start_soon(sender.flush)  # e.g. a last error frame
                    nursery.start_soon(drain)
        await sender_stream.aclose()
        await receiver_stream.aclose()
        assert bytes(received) == expected

    trio.run(scenario)


def test_receive_is_empty_once_the_peer_closed() -> None:
    async def scenario() -> None:
        left, right = trio.socket.socketpair()
        stream = trio.SocketStream(right)
        with RawSocket(stream) as raw:
            left.close()
            with trio.fail_after(5):
                assert len(await raw.receive()) == 0
        await stream.aclose()

    trio.run(scenario)
