"""A misbehaving peer, as its own process: `fakepeer.py MODE HOST PORT [SECRET_FILE]`.

Connecting modes (a bad primary): garbage, version, stall, auth-stall.
Listening modes (a bad secondary): listen-version, listen-stall, listen-auth-stall, and the
ones that break a stream the handshake completed (after sending PEER_STATE): listen-close
(closes), listen-reset (a TCP reset once the first frames arrived), listen-garbage (bytes that
are no frame), listen-enospc (the secondary's refusal of a mutation: disk full), listen-ack-reset
(acknowledges what arrives for a while, then resets mid-stream), listen-huge-answer (answers
the resync's first query with RESULT parts that never end: more than a primary may hold).
It prints what it saw, one line per event, and "closed after N.N s" when the other side hangs up.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time

from tandem.engine.protocol.connection import (
    AckKind,
    Authenticated,
    Connection,
    ConnectionFailed,
    Identity,
    MutationReceived,
    PeerError,
    PeerState,
    Side,
)
from tandem.fsdriver.mutation import Write


def say(text: str) -> None:
    print(text, flush=True)


def drain(sock: socket.socket, connection: Connection | None, limit: float = 60) -> None:
    """Read until the other side closes, reporting what it said."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        while data := sock.recv(65536):
            for event in connection.receive(data) if connection else []:
                if isinstance(event, PeerError | ConnectionFailed):
                    say(f"peer said: {event.reason}")
    except (TimeoutError, ConnectionResetError):
        say("not closed")
        return
    say(f"closed after {time.monotonic() - started:.1f} s")


def authenticate(sock: socket.socket, connection: Connection) -> None:
    sock.sendall(connection.bytes_to_send())
    while True:
        data = sock.recv(65536)
        if not data:
            raise SystemExit("peer closed during the handshake")
        for event in connection.receive(data):
            if isinstance(event, Authenticated):
                sock.sendall(connection.bytes_to_send())
                say("authenticated")
                return
            if isinstance(event, PeerError | ConnectionFailed):
                raise SystemExit(f"refused: {event.reason}")
        sock.sendall(connection.bytes_to_send())


def main(mode: str, host: str, port: int, secret: bytes) -> None:
    identity = Identity("intruder", "demo/0")
    if mode.startswith("listen-"):
        server = socket.create_server((host, port))
        say("listening")
        sock, _ = server.accept()
    else:
        sock = socket.create_connection((host, port), timeout=10)
    role = Side.RESPONDER if mode.startswith("listen-") else Side.INITIATOR
    if mode == "garbage":
        sock.sendall(os.urandom(4096))
        drain(sock, None)
    elif mode in ("version", "listen-version"):
        connection = Connection(role, identity, secret, versions=(9, 9))
        sock.sendall(connection.bytes_to_send())
        drain(sock, connection)
    elif mode in ("stall", "listen-stall"):
        hello = Connection(role, identity, secret).bytes_to_send()
        sock.sendall(hello[: len(hello) // 2])  # half a frame, then nothing
        drain(sock, None)
    elif mode == "auth-stall":
        connection = Connection(role, identity, secret)
        authenticate(sock, connection)
        connection.send_mutation(1, Write(b"stalled", 0, b"x" * 1000, ()))
        frame = connection.bytes_to_send()
        sock.sendall(frame[: len(frame) // 2])
        drain(sock, connection)
    elif mode == "listen-auth-stall":
        connection = Connection(role, identity, secret)
        authenticate(sock, connection)
        sock.recv(65536)  # the first mutation; answer half an acknowledgement
        connection.send_ack(AckKind.APPLIED, 1)
        frame = connection.bytes_to_send()
        sock.sendall(frame[: len(frame) // 2])
        drain(sock, connection)
    elif mode in BREAKING:
        connection = Connection(role, identity, secret)
        authenticate(sock, connection)
        connection.send_peer_state(PeerState("", False, False, ()))
        sock.sendall(connection.bytes_to_send())
        say("peer state sent")
        BREAKING[mode](sock, connection)
    else:
        raise SystemExit(f"unknown mode {mode}")


def _reset(sock: socket.socket) -> None:
    # SO_LINGER 0: close sends RST instead of FIN
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    say("reset")


def _close(sock: socket.socket, connection: Connection) -> None:
    sock.close()
    say("closed")


def _reset_at_first_frames(sock: socket.socket, connection: Connection) -> None:
    sock.recv(65536)
    _reset(sock)


def _garbage(sock: socket.socket, connection: Connection) -> None:
    sock.sendall(b"\xff" * 64)
    drain(sock, None)


def _enospc(sock: socket.socket, connection: Connection) -> None:
    connection.receive(sock.recv(65536))
    connection.send_error(
        "cannot apply mutation 1 (Ensure b'.'): [Errno 28] No space left on device"
    )
    sock.sendall(connection.bytes_to_send())
    drain(sock, None)


def _ack_then_reset(sock: socket.socket, connection: Connection) -> None:
    deadline = time.monotonic() + 1.5
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            continue
        if not data:
            break
        for event in connection.receive(data):
            if isinstance(event, MutationReceived):
                connection.send_ack(AckKind.RECEIVED, event.seq)
                connection.send_ack(AckKind.APPLIED, event.seq)
        sock.sendall(connection.bytes_to_send())
    _reset(sock)


def _huge_answer(sock: socket.socket, connection: Connection) -> None:
    from tandem.engine.protocol.queries import Query

    part = os.urandom(4 << 20)  # incompressible: each part crosses as 4 MiB
    sent = 0
    try:
        while data := sock.recv(1 << 20):
            for event in connection.receive(data):
                if isinstance(event, PeerError | ConnectionFailed):
                    say(f"peer said: {event.reason}")
                if isinstance(event, MutationReceived) and isinstance(event.mutation, Query):
                    say(f"answering query {event.seq} without end")
                    while True:
                        connection.send_result(event.seq, part, final=False)
                        sock.sendall(connection.bytes_to_send())
                        sent += len(part)
    except (BrokenPipeError, ConnectionResetError):
        pass
    say(f"closed after {sent >> 20} MiB of answer")


BREAKING = {
    "listen-huge-answer": _huge_answer,
    "listen-close": _close,
    "listen-reset": _reset_at_first_frames,
    "listen-garbage": _garbage,
    "listen-enospc": _enospc,
    "listen-ack-reset": _ack_then_reset,
}


if __name__ == "__main__":
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    secret = b"no-secret-given!"
    if len(sys.argv) > 4:
        with open(sys.argv[4], "rb") as secret_file:
            secret = secret_file.read().strip()
    main(mode, host, port, secret)
