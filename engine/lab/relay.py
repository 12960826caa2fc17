"""A delaying TCP relay for the lab (`tandem lab impair delay`): this kernel has no netem, so
delay is added in user space. Run in a node's network namespace, it accepts the connections an
nftables `redirect` sends it (every new TCP connection to the peer), finds where each was going
(SO_ORIGINAL_DST), connects there itself (its packets marked so the redirect lets them pass),
and forwards each chunk of bytes in both directions ``--delay`` seconds after it arrived, in
order.

    python -m tandem.engine.lab.relay --port 17400 --delay 0.03 --mark 0x7461
"""

from __future__ import annotations

import argparse
import math
import socket
import struct
import sys

import trio

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
CHUNK = 1 << 16


def original_destination(sock: trio.socket.SocketType) -> tuple[str, int]:
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, address = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(address), port


async def _pump(source: trio.SocketStream, target: trio.SocketStream, delay: float) -> None:
    """Bytes from ``source`` reach ``target`` ``delay`` seconds after they arrived; the end of
    ``source`` ends ``target``'s sending side once everything before it went out."""
    send, receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)

    async def later() -> None:
        async for due, data in receive:
            await trio.sleep_until(due)
            await target.send_all(data)
        await target.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        async with send:
            while data := await source.receive_some(CHUNK):
                send.send_nowait((trio.current_time() + delay, data))


async def _relay(client: trio.SocketStream, delay: float, mark: int) -> None:
    try:
        host, port = original_destination(client.socket)
        upstream_socket = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream_socket.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        await upstream_socket.connect((host, port))
    except OSError:
        await client.aclose()  # where it was going cannot be reached: the caller sees a reset
        return
    upstream = trio.SocketStream(upstream_socket)
    try:
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(_pump, client, upstream, delay)
            nursery.start_soon(_pump, upstream, client, delay)
    except* (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # one side went away: so does the other


async def serve(port: int, delay: float, mark: int) -> None:
    async def relay(client: trio.SocketStream) -> None:
        await _relay(client, delay, mark)

    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    await trio.serve_listeners(relay, listeners)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tandem.engine.lab.relay")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, required=True, help="seconds, each way")
    parser.add_argument("--mark", type=lambda text: int(text, 0), required=True)
    args = parser.parse_args(argv)
    trio.run(serve, args.port, args.delay, args.mark)
    return 0


if __name__ == "__main__":
    sys.exit(main())
