"""The lab's way in to the nodes' consoles from this machine's browser: the nodes listen inside
their network namespaces, which the machine itself has no route to. This relay opens its
listening sockets on the machine's loopback first, then moves itself into the lab's client
namespace (setns), so that every connection it makes from then on starts there: a browser on
``https://127.0.0.1:PORT/`` reaches a node's console as the lab's client would.

    python -m tandem.engine.lab.console_relay /run/netns/NS 127.0.0.1:9453=198.18.0.1:9453 ...
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys

import trio

CLONE_NEWNET = 0x40000000
CHUNK = 1 << 16


def enter_namespace(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _copy(source: trio.SocketStream, target: trio.SocketStream) -> None:
    try:
        while data := await source.receive_some(CHUNK):
            await target.send_all(data)
        await target.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def _relay(client: trio.SocketStream, target: tuple[str, int]) -> None:
    async with client:
        try:
            server = await trio.open_tcp_stream(*target)
        except OSError:
            return
        async with server, trio.open_nursery() as nursery:
            nursery.start_soon(_copy, client, server)
            nursery.start_soon(_copy, server, client)


async def _serve(listeners: list[tuple[socket.socket, tuple[str, int]]]) -> None:
    async with trio.open_nursery() as nursery:
        for raw, target in listeners:
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))

            async def handle(stream: trio.SocketStream, target: tuple[str, int] = target) -> None:
                await _relay(stream, target)

            nursery.start_soon(trio.serve_listeners, handle, [listener])
        print("relaying", flush=True)


def main(argv: list[str]) -> int:
    namespace, *pairs = argv
    listeners = []
    for pair in pairs:
        listen, _, target = pair.partition("=")
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            raw.bind(_address(listen))
        except OSError as exc:
            print(f"cannot listen on {listen}: {exc.strerror}", flush=True)
            return 1
        raw.listen(64)
        listeners.append((raw, _address(target)))
    enter_namespace(namespace)  # the listeners stay where they were made
    try:
        trio.run(_serve, listeners)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
