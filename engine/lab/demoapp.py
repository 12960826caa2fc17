"""The lab's demo application: a tiny key-value service keeping its data in the replicated
directory, and a client that writes to it through the virtual IP.

    python -m tandem.engine.lab.demoapp serve DIR PORT
    python -m tandem.engine.lab.demoapp client HOST PORT --log FILE [--seconds S] [--prefix P]
                                        [--stamp]
    python -m tandem.engine.lab.demoapp get HOST PORT KEY
    python -m tandem.engine.lab.demoapp probe HOST PORT --out FILE [--seconds S]

Protocol, one line each way: ``PUT key value`` → ``OK`` once the pair is appended to
``DIR/store.log`` and fsync'd (so an ``OK`` is an acknowledged write: Tandem must keep it);
``GET key`` → ``VALUE v`` or ``NONE``; ``COUNT`` → ``COUNT n``. The client logs every key it got
an ``OK`` for, reconnects after a failure, and reports the longest time without an answer.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import socketserver
import sys
import threading
import time

STORE = "store.log"


def _whole_records(fd: int) -> int:
    """The size of the store's whole records: a last line without its newline (a crash in the
    middle of a write) was never acknowledged, and is cut off."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    tail = os.pread(fd, min(size, 1 << 16), max(0, size - (1 << 16)))
    whole = size - len(tail) + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
    os.ftruncate(fd, whole)
    return whole


def serve(directory: str, port: int) -> None:
    path = os.path.join(directory, STORE)
    # one write(2) per record, and a record that did not make it whole (a full disk) is cut
    # off again: a write that was not acknowledged must not leave half a line before the next
    store = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    kept = _whole_records(store)
    data: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as existing:
        for line in existing:
            key, _, value = line.rstrip("\n").partition(" ")
            if key:
                data[key] = value
    lock = threading.Lock()

    def append(key: str, value: str) -> str:
        nonlocal kept
        record = f"{key} {value}\n".encode()
        with lock:
            try:
                if os.write(store, record) != len(record):
                    raise OSError(errno.ENOSPC, "short write")
                os.fsync(store)
            except OSError as exc:
                try:
                    os.ftruncate(store, kept)
                except OSError:
                    pass
                return f"ERROR {exc.strerror}"
            kept += len(record)
            data[key] = value
        return "OK"

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for raw in self.rfile:
                words = raw.decode(errors="replace").strip().split(" ", 2)
                if words[0] == "PUT" and len(words) == 3:
                    answer = append(words[1], words[2])
                elif words[0] == "GET" and len(words) == 2:
                    value = data.get(words[1])
                    answer = "NONE" if value is None else f"VALUE {value}"
                elif words[0] == "COUNT":
                    answer = f"COUNT {len(data)}"
                elif words[0] == "WHO":  # which node answers (start_prim's environment says)
                    answer = f"NODE {os.environ.get('TANDEM_NODE', '?')}"
                else:
                    answer = "ERROR unknown request"
                self.wfile.write(answer.encode() + b"\n")

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    with Server(("0.0.0.0", port), Handler) as server:
        print(f"demo app serving {directory} on port {port}", flush=True)
        server.serve_forever()


def client(
    host: str, port: int, log_path: str, seconds: float, prefix: str, stamp: bool = False
) -> dict[str, float]:
    """Write keys for ``seconds``; returns what it saw (acknowledged count, longest outage).
    With ``stamp`` each logged key is followed by the wall-clock time of its OK (the nodes'
    logs use the same clock), so a lost write can be matched with what the cluster did."""
    acked = 0
    longest_gap = 0.0
    last_answer = time.monotonic()
    deadline = last_answer + seconds
    n = 0
    with open(log_path, "a", encoding="utf-8", buffering=1) as log:
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((host, port), timeout=1.0) as sock:
                    sock.settimeout(5.0)
                    reader = sock.makefile("rb")
                    while time.monotonic() < deadline:
                        key = f"{prefix}{n}"
                        sock.sendall(f"PUT {key} v{n}\n".encode())
                        answer = reader.readline().strip()
                        if answer != b"OK":
                            raise OSError(f"answer {answer!r}")
                        now = time.monotonic()
                        longest_gap = max(longest_gap, now - last_answer)
                        last_answer = now
                        log.write(f"{key} {time.time():.3f}\n" if stamp else key + "\n")
                        acked += 1
                        n += 1
            except OSError:
                n += 1  # the key in flight may or may not have been kept: never reuse it
                time.sleep(0.02)
    return {"acknowledged": acked, "longest_gap_s": round(longest_gap, 3)}


def probe(host: str, port: int, out_path: str, seconds: float) -> None:
    """Ask who answers, as often as possible; write ``monotonic-time node`` at every change
    (the monotonic clock is the machine's, the same in every namespace)."""
    deadline = time.monotonic() + seconds
    last = None
    with open(out_path, "a", encoding="utf-8", buffering=1) as out:
        while time.monotonic() < deadline:
            try:
                answer = ask(host, port, "WHO", timeout=0.2)
            except OSError:
                answer = "none"
            node = answer.removeprefix("NODE ")
            if node != last:
                out.write(f"{time.monotonic():.4f} {node}\n")
                last = node
            time.sleep(0.005)


def ask(host: str, port: int, line: str, timeout: float = 5.0) -> str:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(line.encode() + b"\n")
        return sock.makefile("rb").readline().decode().strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tandem.engine.lab.demoapp")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve")
    serve_parser.add_argument("directory")
    serve_parser.add_argument("port", type=int)
    serve_parser.add_argument("--name", help="the process name (what a process checker looks for)")
    client_parser = commands.add_parser("client")
    client_parser.add_argument("host")
    client_parser.add_argument("port", type=int)
    client_parser.add_argument("--log", required=True)
    client_parser.add_argument("--seconds", type=float, default=10.0)
    client_parser.add_argument("--prefix", default="k")
    client_parser.add_argument("--stamp", action="store_true", help="log each OK's time too")
    probe_parser = commands.add_parser("probe")
    probe_parser.add_argument("host")
    probe_parser.add_argument("port", type=int)
    probe_parser.add_argument("--out", required=True)
    probe_parser.add_argument("--seconds", type=float, default=60.0)
    get_parser = commands.add_parser("get")
    get_parser.add_argument("host")
    get_parser.add_argument("port", type=int)
    get_parser.add_argument("key")
    args = parser.parse_args(argv)
    if args.command == "serve":
        if args.name:
            with open("/proc/self/comm", "w") as comm:  # at most 15 bytes are kept
                comm.write(args.name)
        serve(args.directory, args.port)
    elif args.command == "client":
        print(
            json.dumps(
                client(args.host, args.port, args.log, args.seconds, args.prefix, args.stamp)
            )
        )
    elif args.command == "probe":
        probe(args.host, args.port, args.out, args.seconds)
    else:
        print(ask(args.host, args.port, f"GET {args.key}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
