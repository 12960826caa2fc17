"""The cloud health probe over real HTTP: 200 only while this node serves the module (the answer
follows the state at every probe), 503 otherwise, with the reason; bad requests answered, never
a crash; a prober that sends nothing does not hold the server."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import trio

from tandem.vip.health import serve_health


def test_the_probe_follows_the_module_state() -> None:
    state = {"serving": False}

    def serving(module: str) -> tuple[bool, str]:
        assert module == "web"
        return (True, "web is ALONE on alpha") if state["serving"] else (False, "web is SECOND")

    def get(port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def raw(port: int, data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(data)
            return sock.recv(4096)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_health, "127.0.0.1", 0, "web", serving)
            port = listeners[0].socket.getsockname()[1]
            silent = await trio.to_thread.run_sync(
                lambda: socket.create_connection(("127.0.0.1", port))
            )  # says nothing: must not block the others
            assert await trio.to_thread.run_sync(get, port, "/") == (503, "web is SECOND\n")
            state["serving"] = True
            for path in ("/", "/health", "/web?x=1"):
                answer = await trio.to_thread.run_sync(get, port, path)
                assert answer == (200, "web is ALONE on alpha\n")
            assert (await trio.to_thread.run_sync(get, port, "/db"))[0] == 404
            post = await trio.to_thread.run_sync(raw, port, b"POST / HTTP/1.1\r\n\r\n")
            assert post.startswith(b"HTTP/1.1 405")
            junk = await trio.to_thread.run_sync(raw, port, b"\x00\xffgarbage\r\n\r\n")
            assert junk.startswith(b"HTTP/1.1 400")
            head = await trio.to_thread.run_sync(raw, port, b"HEAD / HTTP/1.0\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
            big = await trio.to_thread.run_sync(raw, port, b"GET / HTTP/1.1\r\nX: " + b"a" * 9000)
            assert big.startswith(b"HTTP/1.1 431")
            silent.close()
            nursery.cancel_scope.cancel()

    trio.run(main)
