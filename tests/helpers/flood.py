"""Strangers by the thousand, as a process of its own: `flood.py COUNT HOST PORT SOURCE
[churn]` opens COUNT TCP connections to HOST:PORT from the address SOURCE, sends nothing,
prints "holding N" (how many the kernel took) and keeps them open until its stdin closes. With
"churn" it then keeps replacing its oldest connection by a new one, as fast as it can: a flood
that never settles. One process holds at most its descriptor limit: run several for more."""

from __future__ import annotations

import socket
import sys
import threading
from collections import deque


def connect(host: str, port: int, source: str) -> socket.socket | None:
    sock = socket.socket()
    sock.setblocking(False)
    try:
        sock.bind((source, 0))
        sock.connect((host, port))
    except BlockingIOError:
        pass
    except OSError:
        sock.close()
        return None
    return sock


def main() -> None:
    count, host, port, source = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    churn = sys.argv[5:] == ["churn"]
    held: deque[socket.socket] = deque()
    for _ in range(count):
        sock = connect(host, port, source)
        if sock is not None:
            held.append(sock)
    print(f"holding {len(held)}", flush=True)
    ended = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), ended.set()), daemon=True).start()
    while not ended.wait(0 if churn else None):
        if held:
            held.popleft().close()
        sock = connect(host, port, source)
        if sock is not None:
            held.append(sock)


if __name__ == "__main__":
    main()
