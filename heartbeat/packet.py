"""Heartbeat packets, sans-IO: bytes in, a checked `Heartbeat` or a reason out.

A packet proves its sender holds the cluster secret (HMAC-SHA256 over everything before it) and
is fresh: each run of a node has an *incarnation* (its start time in nanoseconds: a later run
has a larger one) and numbers its heartbeats; a receiver accepts an incarnation only if it is
not older than the newest it knows, and a sequence number once per network and only near the
newest it has seen, so a recorded packet replayed later (or on another network) is rejected and
counted.

Layout (big-endian): ``magic "TDHB" | u8 version | u8 name length | name | u64 incarnation |
u64 seq | u16 payload length | payload | 16-byte truncated HMAC``. The payload is opaque here
(the node's module states, for the layers above).

During a rotation of the cluster secret a node holds up to three secrets (current, next,
previous): it signs with one and accepts a packet signed with any, and says which one the peer
signs with, so an admin can see when the old secret may be retired.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

MAGIC = b"TDHB"
VERSION = 1
MAC_BYTES = 16
MAX_PAYLOAD = 1200  # one unfragmented UDP datagram on any sane network
REPLAY_WINDOW = 64  # sequence numbers behind the newest still accepted (another network's copy)
_HEAD = struct.Struct(">4sBB")
_NUMBERS = struct.Struct(">QQH")


class BadPacket(Exception):
    """Why a datagram was not taken; ``kind`` counts it (malformed, forged, replayed, …)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True)
class Heartbeat:
    node: str
    incarnation: int
    seq: int
    payload: bytes = b""


def new_incarnation() -> int:
    """This run's incarnation: later runs have larger ones (as long as the clock moves on)."""
    return time.time_ns()


def encode(secret: bytes, heartbeat: Heartbeat) -> bytes:
    name = heartbeat.node.encode()
    if not 0 < len(name) < 256 or len(heartbeat.payload) > MAX_PAYLOAD:
        raise ValueError("node name of 1-255 bytes and a payload of at most 1200 bytes")
    body = (
        _HEAD.pack(MAGIC, VERSION, len(name))
        + name
        + _NUMBERS.pack(heartbeat.incarnation, heartbeat.seq, len(heartbeat.payload))
        + heartbeat.payload
    )
    return body + _mac(secret, body)


def decode(secret: bytes | Sequence[bytes], data: bytes) -> Heartbeat:
    return decode_signed(secret, data)[0]


def decode_signed(secrets: bytes | Sequence[bytes], data: bytes) -> tuple[Heartbeat, int]:
    """The heartbeat and the index, in `secrets`, of the secret it was signed with."""
    held = (secrets,) if isinstance(secrets, bytes) else tuple(secrets)
    if len(data) < _HEAD.size + _NUMBERS.size + MAC_BYTES:
        raise BadPacket("malformed", f"a {len(data)}-byte datagram is too short for a heartbeat")
    magic, version, name_length = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise BadPacket("malformed", "not a Tandem heartbeat (bad magic)")
    body, mac = data[:-MAC_BYTES], data[-MAC_BYTES:]
    # authenticity before anything else is believed: a version or name from a forger is noise
    # every held secret is tried (no early exit), so the time taken says nothing of which
    signer = -1
    for index, secret in enumerate(held):
        if hmac.compare_digest(mac, _mac(secret, body)) and signer < 0:
            signer = index
    if signer < 0:
        raise BadPacket("forged", "bad authentication (another cluster's secret, or forged)")
    if version != VERSION:
        raise BadPacket("version", f"heartbeat version {version}, this node speaks {VERSION}")
    position = _HEAD.size + name_length
    if len(body) < position + _NUMBERS.size:
        raise BadPacket("malformed", "the heartbeat ends early")
    incarnation, seq, payload_length = _NUMBERS.unpack_from(body, position)
    payload = body[position + _NUMBERS.size :]
    if len(payload) != payload_length:
        raise BadPacket("malformed", "the heartbeat's payload length is wrong")
    try:
        node = body[_HEAD.size : _HEAD.size + name_length].decode()
    except UnicodeDecodeError:
        raise BadPacket("malformed", "the heartbeat's node name is not UTF-8") from None
    return Heartbeat(node, incarnation, seq, payload), signer


def _mac(secret: bytes, body: bytes) -> bytes:
    return hmac.new(secret, b"tandem heartbeat\0" + body, hashlib.sha256).digest()[:MAC_BYTES]


@dataclass
class _Peer:
    incarnation: int
    newest: int
    per_network: dict[str, int] = field(default_factory=dict)


class BeatChecker:
    """Checks datagrams from the peers: authentic, from a known node, fresh. Counts rejects."""

    def __init__(self, secret: bytes | Callable[[], Sequence[bytes]], peers: set[str]) -> None:
        # a callable is asked on every packet: secrets installed or retired while the node
        # runs are taken at once (it caches; see `tandem.engine.config.secrets`)
        self._secrets: Callable[[], Sequence[bytes]] = (
            (lambda: (secret,)) if isinstance(secret, bytes) else secret
        )
        self.signer: dict[str, bytes] = {}  # per peer: the secret its newest packet was signed with
        self._peers = set(peers)
        self._known: dict[str, _Peer] = {}
        self.rejected: Counter[str] = Counter()
        self.last_reject = ""

    def take(self, network: str, data: bytes) -> Heartbeat | None:
        """The heartbeat if it is to be believed; None (counted, reason kept) otherwise."""
        try:
            held = self._secrets()
            heartbeat, signer = decode_signed(held, data)
            self._check_fresh(network, heartbeat)
            self.signer[heartbeat.node] = held[signer]
        except BadPacket as bad:
            self.rejected[bad.kind] += 1
            self.last_reject = f"{network}: {bad}"
            return None
        return heartbeat

    def _check_fresh(self, network: str, heartbeat: Heartbeat) -> None:
        if heartbeat.node not in self._peers:
            raise BadPacket("stranger", f"a heartbeat from {heartbeat.node!r}, not a peer")
        known = self._known.get(heartbeat.node)
        if known is not None and heartbeat.incarnation < known.incarnation:
            raise BadPacket("replayed", "a heartbeat of an earlier run of that node")
        if known is None or heartbeat.incarnation > known.incarnation:
            # the MAC covers the incarnation: only the peer itself can start a new one
            self._known[heartbeat.node] = _Peer(heartbeat.incarnation, heartbeat.seq)
            self._known[heartbeat.node].per_network[network] = heartbeat.seq
            return
        if heartbeat.seq + REPLAY_WINDOW < known.newest:
            raise BadPacket("replayed", f"heartbeat {heartbeat.seq} is far behind {known.newest}")
        if heartbeat.seq <= known.per_network.get(network, -1):
            raise BadPacket("replayed", f"heartbeat {heartbeat.seq} was already heard here")
        known.per_network[network] = heartbeat.seq
        known.newest = max(known.newest, heartbeat.seq)
