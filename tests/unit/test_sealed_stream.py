"""Every frame after the handshake is sealed: a relay without the secret can read nothing, and
nothing it injects, alters, drops, replays or reorders is acted on (the report: a relay passed
the handshake through and then inserted MUTATION frames the secondary applied). Rotation: two
nodes holding different sets of secrets agree on one they share, or refuse with a clear line.
"""

from __future__ import annotations

import os
import struct

import pytest

from tandem.engine.protocol.connection import (
    AckKind,
    Acknowledged,
    Authenticated,
    Connection,
    ConnectionFailed,
    ConnectionState,
    FrameKind,
    Identity,
    MutationReceived,
    Side,
)
from tandem.engine.protocol.keys import Keyring, key_id
from tandem.fsdriver.mutation import CreateFile, Write

OLD = b"an old secret of thirty-two bytes or so"
NEW = b"the new secret that replaces the old one"
MARKER = b"MARKER-4c1b7f0e-plaintext-must-not-cross"


def _ready(
    secret_a: bytes | Keyring = OLD, secret_b: bytes | Keyring = OLD
) -> tuple[Connection, Connection, list[object], list[object]]:
    a = Connection(Side.INITIATOR, Identity("a", "data"), secret_a)
    b = Connection(Side.RESPONDER, Identity("b", "data"), secret_b)
    got_a: list[object] = []
    got_b: list[object] = []
    for _ in range(4):
        got_b += b.receive(a.bytes_to_send())
        got_a += a.receive(b.bytes_to_send())
    return a, b, got_a, got_b


def _frames(data: bytes) -> list[bytes]:
    """Split sealed frames (``u32 length | sealed``) as a relay on the path would."""
    found, at = [], 0
    while at < len(data):
        (length,) = struct.unpack_from(">I", data, at)
        found.append(data[at : at + 4 + length])
        at += 4 + length
    return found


def _mutations(connection: Connection, count: int, first: int = 1, data: bytes = b"") -> bytes:
    for seq in range(first, first + count):
        connection.send_mutation(seq, Write(b"db", seq * 4096, data or MARKER * 100))
    return bytes(connection.bytes_to_send())


# a 4 KiB write sealed in one piece; a 1 MiB one (incompressible: it stays that big) sealed
# and opened piecewise
PAYLOADS = {"4 KiB": b"", "1 MiB": MARKER + os.urandom(1 << 20)}


def test_what_crosses_the_network_after_the_handshake_is_ciphertext() -> None:
    a, b, _, _ = _ready()
    wire = _mutations(a, 3)
    assert MARKER not in wire and b"db" not in wire
    got = b.receive(wire)
    assert [type(e) for e in got] == [MutationReceived] * 3
    assert all(MARKER in e.mutation.data for e in got)  # type: ignore[attr-defined]


def test_a_frame_injected_by_a_relay_without_the_secret_is_refused() -> None:
    a, b, _, _ = _ready()
    # the relay speaks the protocol perfectly, with its own (wrong) secret
    _, forger, _, _ = _ready(b"a relay's guess at the secret", b"a relay's guess at the secret")
    forger.send_mutation(1, CreateFile(b"injected", 0o4755, 0, 0))
    injected = bytes(forger.bytes_to_send())
    got = b.receive(_mutations(a, 1) + injected)
    assert isinstance(got[0], MutationReceived)
    assert [type(e) for e in got[1:]] == [ConnectionFailed]
    assert "failed authentication" in got[1].reason  # type: ignore[attr-defined]
    assert b.state is ConnectionState.CLOSED


def test_a_plaintext_frame_after_the_handshake_is_refused() -> None:
    _a, b, _, _ = _ready()
    # the old protocol's MUTATION frame, as the reported relay inserted it
    body = struct.pack(">Q", 1) + b"\x03" + b"x" * 40
    plain = struct.pack(">IBB", len(body) + 2, FrameKind.MUTATION, 0) + body
    got = b.receive(plain)
    assert [type(e) for e in got] == [ConnectionFailed]


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("position", [0, 3, 4, 5, 20, 40_000, -17, -1])
def test_a_flipped_bit_anywhere_in_a_frame_is_refused(position: int, payload: str) -> None:
    a, b, _, _ = _ready()
    frame = bytearray(_mutations(a, 1, data=PAYLOADS[payload]))
    position = min(position, len(frame) - 1)
    frame[position] ^= 0x01
    got = b.receive(bytes(frame))
    # a changed length either waits for bytes that never come or fails; never acted on
    assert not any(isinstance(e, MutationReceived) for e in got)
    if got:
        assert [type(e) for e in got] == [ConnectionFailed]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_dropped_replayed_and_reordered_frames_are_refused(payload: str) -> None:
    for tamper in ("drop", "replay", "reorder"):
        a, b, _, _ = _ready()
        one, two, three = _frames(_mutations(a, 3, data=PAYLOADS[payload]))
        wire = {
            "drop": one + three,
            "replay": one + one,
            "reorder": one + three + two,
        }[tamper]
        got = b.receive(wire)
        assert [type(e) for e in got] == [MutationReceived, ConnectionFailed], tamper


def test_kind_and_flags_are_authenticated_though_not_hidden() -> None:
    """A sealed frame shows its kind (as its size would) and its body leaves the cipher as it
    is; a relay that relabels an ACK as a MUTATION, or sets a flag, breaks the frame."""
    for change in ((4, FrameKind.MUTATION), (5, 0x02)):
        a, b, _, _ = _ready()
        b.send_ack(AckKind.APPLIED, 1)
        frame = bytearray(b.bytes_to_send())
        assert frame[4] == FrameKind.ACK
        frame[change[0]] = change[1]
        assert [type(e) for e in a.receive(bytes(frame))] == [ConnectionFailed]


def test_a_frame_of_another_connection_or_direction_does_not_open() -> None:
    _a, b, _, _ = _ready()
    a2, _b2, _, _ = _ready()  # the same secret, a later connection
    captured = _mutations(a2, 1)
    assert [type(e) for e in b.receive(captured)] == [ConnectionFailed]
    a3, b3, _, _ = _ready()
    b3.send_ack(AckKind.APPLIED, 1)
    reflected = bytes(b3.bytes_to_send())
    assert [type(e) for e in a3.receive(reflected)] == [Acknowledged]
    assert [type(e) for e in b3.receive(reflected)] == [ConnectionFailed]  # back to its sender


def test_the_same_content_never_looks_the_same_on_two_connections() -> None:
    a, _, _, _ = _ready()
    a2, _, _, _ = _ready()
    assert _mutations(a, 1) != _mutations(a2, 1)


@pytest.mark.parametrize(
    ("ring_a", "ring_b", "used"),
    [
        # step 1 done on a only: both still use the old secret
        (Keyring(OLD, next=NEW), Keyring(OLD), OLD),
        # step 1 done on both: the new secret takes over at once
        (Keyring(OLD, next=NEW), Keyring(OLD, next=NEW), NEW),
        # step 2 (promote) done on a only
        (Keyring(NEW, previous=OLD), Keyring(OLD, next=NEW), NEW),
        (Keyring(OLD, next=NEW), Keyring(NEW, previous=OLD), NEW),
        # step 3 (retire) on a, b promoted
        (Keyring(NEW), Keyring(NEW, previous=OLD), NEW),
    ],
)
def test_a_rotation_done_one_node_at_a_time_never_cuts_the_stream(
    ring_a: Keyring, ring_b: Keyring, used: bytes
) -> None:
    a, b, got_a, got_b = _ready(ring_a, ring_b)
    assert [type(e) for e in got_a] == [Authenticated]
    assert [type(e) for e in got_b] == [Authenticated]
    assert a._chosen == b._chosen == used
    assert [type(e) for e in b.receive(_mutations(a, 2))] == [MutationReceived] * 2


def test_nodes_that_share_no_secret_are_refused_with_a_clear_line() -> None:
    _, _, got_a, got_b = _ready(Keyring(NEW), Keyring(OLD))
    for got in (got_a, got_b):
        assert any(
            isinstance(e, ConnectionFailed) and "wrong cluster secret" in e.reason for e in got
        )


def test_a_key_id_names_a_secret_without_revealing_it() -> None:
    assert key_id(OLD) != key_id(NEW)
    assert OLD not in key_id(OLD) and len(key_id(OLD)) == 8


def test_a_recording_and_the_secret_together_do_not_open_the_stream() -> None:
    """Forward secrecy: whoever recorded a connection and later obtains the secret still cannot
    derive its keys — they also depend on ephemeral X25519 keys that never cross the network.
    (Without the exchange, the secret and the two recorded HELLOs gave them.)"""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from tandem.engine.protocol.keys import derive

    a, b, _, _ = _ready()
    sealed = _frames(_mutations(a, 1))[0]
    first_nonce, header, body = b"\0" * 12, sealed[:6], sealed[6:]  # length, kind, flags
    transcript = a._transcript()  # both HELLOs: everything of the handshake a recording holds
    for guess in (b"", b"\0" * 32):
        outgoing, _ = derive(OLD, guess, transcript)
        with pytest.raises(InvalidTag):
            AESGCM(outgoing).decrypt(first_nonce, body, header)
    # the control: with the ephemeral private key (which only a's memory held), it opens
    peer_public = X25519PublicKey.from_public_bytes(b._my_hello[-32:])
    outgoing, _ = derive(OLD, a._exchange.exchange(peer_public), transcript)
    assert MARKER in AESGCM(outgoing).decrypt(first_nonce, body, header)
