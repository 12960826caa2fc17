"""An attacker on the path, as its own process: `tamper.py MODE LISTEN_PORT TARGET_PORT`.

A TCP relay on loopback that holds no secret. It passes each connection's handshake (the first
two frames each way: HELLO and AUTH) through untouched, then, on the first connection only,
tampers with the primary's stream once, at its fifth sealed frame:

- inject: a well-formed plaintext MUTATION frame of its own (create ``INJECTED``) before it —
  what the protocol before version 5 applied without a word;
- flip: one bit of the frame flipped;
- drop: the frame left out;
- replay: the frame sent twice;
- reorder: the frame held back and sent after the next one.

Every later connection is relayed honestly, so the primary's reconnection can be watched. It
prints "listening", then "tampered MODE" when it did.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading

from tandem.engine.protocol.connection import FrameKind
from tandem.engine.protocol.items import encode_parts
from tandem.fsdriver.mutation import CreateFile

HANDSHAKE_FRAMES = 2
TAMPER_AT = HANDSHAKE_FRAMES + 5
INJECTED = b"INJECTED"


def say(text: str) -> None:
    print(text, flush=True)


def forged_mutation(seq: int) -> bytes:
    parts = [struct.pack(">Q", seq), *encode_parts(CreateFile(INJECTED, 0o100644, 0, 0))]
    body = b"".join(parts)
    return struct.pack(">IBB", len(body) + 2, FrameKind.MUTATION, 0) + body


def frames(source: socket.socket) -> object:
    """Whole frames (u32 length | that many bytes), as read; ends when the source does."""
    buffer = b""
    while True:
        while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack_from(">I", buffer)[0]:
            end = 4 + struct.unpack_from(">I", buffer)[0]
            yield buffer[:end]
            buffer = buffer[end:]
        data = source.recv(1 << 16)
        if not data:
            return
        buffer += data


def pump(source: socket.socket, target: socket.socket, mode: str | None) -> None:
    held: bytes | None = None
    try:
        for index, frame in enumerate(frames(source)):  # type: ignore[call-overload]
            out = [frame]
            if mode is not None and index == TAMPER_AT:
                if mode == "inject":
                    out = [forged_mutation(1_000_000), frame]
                elif mode == "flip":
                    changed = bytearray(frame)
                    changed[len(changed) // 2] ^= 0x10
                    out = [bytes(changed)]
                elif mode == "drop":
                    out = []
                elif mode == "replay":
                    out = [frame, frame]
                elif mode == "reorder":
                    held, out = frame, []
                say(f"tampered {mode}")
            elif held is not None:
                out, held = [frame, held], None
            for piece in out:
                target.sendall(piece)
    except OSError:
        pass
    finally:
        for sock in (target, source):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def relay(client: socket.socket, target_port: int, mode: str | None) -> None:
    try:
        upstream = socket.create_connection(("127.0.0.1", target_port))
    except OSError:
        client.close()
        return
    back = threading.Thread(target=pump, args=(upstream, client, None), daemon=True)
    back.start()
    pump(client, upstream, mode)
    back.join()
    client.close()
    upstream.close()


def main() -> None:
    mode, listen_port, target_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(16)
    say("listening")
    first = True
    while True:
        client, _ = server.accept()
        threading.Thread(
            target=relay, args=(client, target_port, mode if first else None), daemon=True
        ).start()
        first = False


if __name__ == "__main__":
    main()
