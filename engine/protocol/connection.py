"""The replication protocol between two nodes, sans-IO: fed bytes, it yields events and queues
bytes to send; it never touches a socket, so every rule here is tested without a network.

Frame: ``u32 length | u8 kind | u8 flags | body``; ``length`` counts kind, flags and body. A
frame is acted on only once it has fully arrived and decoded, so a malformed or truncated frame
can never be half-applied. Integers are big-endian.

Handshake (both sides at once): each sends HELLO (magic, version range, feature bits, node and
stream names, a fresh nonce, the key ids of the secrets it holds: `tandem.engine.protocol.keys`);
both pick the same secret, and each proves it holds it with
``AUTH = HMAC-SHA256(secret, label | initiator HELLO | responder HELLO)``, where the label names
the sender's role, so a proof cannot be reflected back. Nothing but HELLO and AUTH is accepted
before the peer's proof checks out.

Every frame after the proofs is sealed (decision D26): ``u32 length | u8 kind | u8 flags |
AES-256-GCM(body)``, the six header bytes as associated data (authenticated, not hidden: the
body comes out of the cipher as it is, with no copy to strip a header), under a key of this
connection and direction, with the frame's number in that direction as the nonce. A frame
injected, altered, dropped, replayed or reordered by anyone without the secret fails to open:
the connection ends, nothing of it acted on. The content crosses the network only as
ciphertext.

After that the responder (the secondary) first says where its copy stands (PEER_STATE: the
generation it shares with a primary, and the paths it changed itself since). Then: MUTATION
frames (sequence number + one encoded `Mutation`, resync `Repair` or `Query`, optionally
lz4-compressed when both sides offered it), cumulative ACKs of three kinds (received, applied,
durable), RESULT frames answering a query (by its sequence number, possibly in several parts),
UNSETTLED (paths a resyncing secondary could not settle: the primary compares them), and ERROR
(a reason, then the sender closes). A frame kind this side does not know
ends the connection, unless its sender marked it IGNORABLE (room for optional extensions).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field

import lz4.block
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tandem.engine.protocol.codec import ProtocolError, Reader, Writer, decode_paths
from tandem.engine.protocol.items import StreamItem, decode_mutation, encode_parts
from tandem.engine.protocol.keys import (
    EXCHANGE_KEY_SIZE,
    KEY_ID_SIZE,
    MAX_KEY_IDS,
    Keyring,
    choose,
    derive,
)

MAGIC = b"TNDM"
# 2: resync (PEER_STATE, RESULT, UNSETTLED, repairs and queries); 3: listings carry small
# files' content digests, progress notes; 4: RESULT bodies big-endian like everything else
# (`tandem.engine.protocol.results`)
# 5: key ids in HELLO, every frame after the proofs sealed (D26)
# 6: ALLOCATE (fallocate, every mode); a connection agreed at 5 never carries one
PROTOCOL_VERSION = 6
FIRST_ALLOCATE_VERSION = 6
# A release speaks its own version and the one before, so a node can be upgraded while its peer
# runs the last release. Not across 5: the plaintext stream of 4 and earlier is not offered
# to anyone any more (an attacker on the path could otherwise choose it).
OLDEST_VERSION = 5
MAX_FRAME = 8 << 20  # a 1 MiB FUSE write plus path and stamps fits many times over
# Handshake frames are small: judging their header alone refuses a stranger at once instead of
# waiting for the megabytes a random length field may announce.
MAX_HANDSHAKE_FRAME = 64 << 10
NONCE_SIZE = 32
_HEADER = struct.Struct(">IBB")
_LENGTH = struct.Struct(">I")
_KIND_FLAGS = struct.Struct(">BB")
# a frame's nonce: its number in its direction, after four zero bytes. It never repeats under
# one key (a connection sends far fewer than 2^64 frames), and a replayed or reordered frame is
# opened under the wrong one
_NONCE = struct.Struct(">4xQ")
_TAG = 16
_SEALED_IN_PLACE = 16 << 10  # from this body size a frame is sealed into a buffer of its own
_COMPRESS_MIN = 512


class Feature(enum.IntFlag):
    LZ4 = 1


SUPPORTED_FEATURES = Feature.LZ4


class FrameKind(enum.IntEnum):
    HELLO = 1
    AUTH = 2
    MUTATION = 3
    ACK = 4
    ERROR = 5
    RESULT = 6
    UNSETTLED = 7
    PEER_STATE = 8
    # primary -> secondary, empty, always IGNORABLE: acknowledge what came before me now
    # (an O_SYNC write at the fsync sync point waits for UNHURRIED ones); a receiver that does
    # not know it acknowledged them at once anyway
    ACK_NOW = 9


class FrameFlag(enum.IntFlag):
    IGNORABLE = 1  # a receiver that does not know this kind may skip it
    LZ4 = 2  # body compressed (MUTATION only)
    # MUTATION only: nobody waits for its acknowledgement (file data at the fsync sync point,
    # D33), so the receiver may acknowledge it a little later, with the next one; a receiver
    # that does not know this flag acknowledges at once, as before
    UNHURRIED = 4


class AckKind(enum.IntEnum):
    RECEIVED = 1  # in the peer's memory
    APPLIED = 2  # applied to the peer's copy
    DURABLE = 3  # applied and fsync'd on the peer


class Side(enum.Enum):
    INITIATOR = b"tandem-initiator"
    RESPONDER = b"tandem-responder"


class ConnectionState(enum.Enum):
    HANDSHAKE = "handshake"
    READY = "ready"
    CLOSED = "closed"


# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Authenticated:
    peer_node: str
    peer_stream: str
    version: int
    features: Feature


@dataclass(frozen=True)
class MutationReceived:
    seq: int
    mutation: StreamItem
    unhurried: bool = False  # FrameFlag.UNHURRIED


@dataclass(frozen=True)
class QueryAnswered:
    seq: int
    final: bool  # the last part of the answer
    body: bytes


@dataclass(frozen=True)
class UnsettledPaths:
    paths: tuple[bytes, ...]


@dataclass(frozen=True)
class PeerState:
    generation: str  # "" when the copy shares no known state with a primary
    complete: bool  # False: the copy's own changes are unknown (compare everything)
    served_alone: bool  # it served alone since: its own changes were acknowledged
    paths: tuple[bytes, ...]  # what it changed itself since `generation`


@dataclass(frozen=True)
class Acknowledged:
    kind: AckKind
    seq: int  # every mutation up to and including this one


@dataclass(frozen=True)
class AckWanted:
    """ACK_NOW: the primary waits for everything before it."""


@dataclass(frozen=True)
class PeerError:
    reason: str


@dataclass(frozen=True)
class ConnectionFailed:
    """This side refused the peer: the reason is for the log; an ERROR frame is queued."""

    reason: str


ConnectionEvent = (
    Authenticated
    | MutationReceived
    | AckWanted
    | Acknowledged
    | PeerError
    | ConnectionFailed
    | QueryAnswered
    | UnsettledPaths
    | PeerState
)


# -- value encoding -----------------------------------------------------------------------


# -- the connection -----------------------------------------------------------------------


class _CompressionOutlook:
    """Whether compressing the next frame is worth trying. Data that did not shrink (media,
    databases' compressed pages, encrypted files) costs ~18 µs per 4 KiB to try for nothing,
    on every write's critical path: after a run of failures only one frame in
    ``PROBE_EVERY`` is tried, until one shrinks again."""

    PROBE_EVERY = 64
    FAILURES_BEFORE_SKIPPING = 8
    WORTH_IT = 0.9  # a frame counts as compressible below this size ratio

    def __init__(self) -> None:
        self._failures = 0
        self._skipped = 0

    def worth(self) -> bool:
        if self._failures < self.FAILURES_BEFORE_SKIPPING:
            return True
        self._skipped += 1
        if self._skipped >= self.PROBE_EVERY:
            self._skipped = 0
            return True
        return False

    def record(self, size: int, packed: int) -> None:
        if packed < size * self.WORTH_IT:
            self._failures = 0
        else:
            self._failures += 1


@dataclass(frozen=True)
class Identity:
    node: str
    stream: str  # the module's name and the directory's index: 'web/0'


@dataclass
class _Hello:
    raw: bytes
    version_min: int
    version_max: int
    features: Feature
    node: str
    stream: str
    nonce: bytes
    key_ids: tuple[bytes, ...]
    exchange: bytes = b""  # the sender's ephemeral X25519 public key


def _encode_hello(
    identity: Identity,
    versions: tuple[int, int],
    features: Feature,
    nonce: bytes,
    key_ids: tuple[bytes, ...],
    exchange: bytes,
) -> bytes:
    out = Writer()
    out.parts.append(MAGIC)
    out.u16(versions[0])
    out.u16(versions[1])
    out.u32(int(features))
    out.text(identity.node)
    out.text(identity.stream)
    out.blob(nonce)
    out.u8(len(key_ids))
    for identifier in key_ids:
        out.parts.append(identifier)
    out.parts.append(exchange)
    return out.bytes()


def _decode_hello(body: bytes) -> _Hello:
    if body[:4] != MAGIC:
        raise ProtocolError("not a Tandem peer (bad magic)")
    source = Reader(body[4:])
    version_min, version_max = source.u16(), source.u16()
    features = Feature(source.u32() & int(SUPPORTED_FEATURES))
    node, stream, nonce = source.text(), source.text(), source.blob()
    if len(nonce) != NONCE_SIZE:
        raise ProtocolError("bad nonce")
    if source.at_end():
        # an older release ends its HELLO here: refused by the version check, with its words
        return _Hello(body, version_min, version_max, features, node, stream, nonce, ())
    count = source.u8()
    if not 0 < count <= MAX_KEY_IDS:
        raise ProtocolError(f"{count} key ids in a HELLO")
    key_ids = tuple(source.raw(KEY_ID_SIZE) for _ in range(count))
    exchange = source.raw(EXCHANGE_KEY_SIZE)
    source.end()
    return _Hello(body, version_min, version_max, features, node, stream, nonce, key_ids, exchange)


@dataclass
class Connection:
    """One end of a replication connection for one stream (one directory of a module)."""

    side: Side
    identity: Identity
    secret: bytes | Keyring
    versions: tuple[int, int] = (OLDEST_VERSION, PROTOCOL_VERSION)
    features: Feature = SUPPORTED_FEATURES
    nonce: bytes = field(default_factory=lambda: os.urandom(NONCE_SIZE))
    state: ConnectionState = ConnectionState.HANDSHAKE
    version: int | None = None
    agreed: Feature = field(default_factory=lambda: Feature(0))
    _inbox: bytearray = field(default_factory=bytearray)
    _outbox: bytearray = field(default_factory=bytearray)
    _my_hello: bytes = b""
    _compression: _CompressionOutlook = field(default_factory=_CompressionOutlook)
    _peer_hello: _Hello | None = None
    _keyring: Keyring = field(init=False)
    _chosen: bytes = b""  # the secret both ends hold and use
    # ephemeral, this connection's only: what it helps derive cannot be recomputed later, even
    # with the secret (forward secrecy, D26)
    _exchange: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    _shared: bytes = b""
    _sealer: AESGCM | None = None
    _opener: AESGCM | None = None
    _sealed = 0  # frames sealed so far: the next one's nonce
    _opened = 0

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("a cluster secret is required")
        self._keyring = (
            self.secret if isinstance(self.secret, Keyring) else Keyring(bytes(self.secret))
        )
        public = self._exchange.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._my_hello = _encode_hello(
            self.identity, self.versions, self.features, self.nonce, self._keyring.ids(), public
        )
        self._queue(FrameKind.HELLO, self._my_hello)

    @property
    def agreed_version(self) -> int:
        """The protocol version both ends speak (known once the peer's HELLO arrived)."""
        if self.version is None:
            raise RuntimeError("no protocol version agreed yet")
        return self.version

    # outgoing -----------------------------------------------------------------------------

    def bytes_to_send(self) -> bytearray:
        data, self._outbox = self._outbox, bytearray()
        return data

    def _queue(self, kind: int, body: bytes, flags: int = 0) -> None:
        self._queue_parts(kind, [body], flags)

    def _queue_parts(self, kind: int, parts: list[bytes], flags: int = 0) -> None:
        if self._sealer is None:  # the handshake's own frames
            self._outbox += _HEADER.pack(sum(map(len, parts)) + 2, kind, flags)
            for part in parts:
                self._outbox += part
            return
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        header = _HEADER.pack(len(body) + _KIND_FLAGS.size + _TAG, kind, flags)
        nonce = _NONCE.pack(self._sealed)
        self._sealed += 1
        if len(body) < _SEALED_IN_PLACE:
            self._outbox += header
            self._outbox += self._sealer.encrypt(nonce, body, header)
            return
        # sealed straight into the frame's own buffer, which becomes the outbox when that is
        # empty (one big write per flush): no ciphertext copied from a buffer into another
        frame = bytearray(len(header) + len(body) + _TAG)
        frame[: len(header)] = header
        with memoryview(frame) as view:
            self._sealer.encrypt_into(nonce, body, header, view[len(header) :])
        if self._outbox:
            self._outbox += frame
        else:
            self._outbox = frame

    def _require_ready(self) -> None:
        if self.state is not ConnectionState.READY:
            raise RuntimeError(f"connection is {self.state.value}, not ready")

    def send_mutation(self, seq: int, mutation: StreamItem, unhurried: bool = False) -> None:
        self._require_ready()
        parts = encode_parts(mutation)
        size = sum(map(len, parts))
        flags = FrameFlag.UNHURRIED if unhurried else 0
        if Feature.LZ4 in self.agreed and size >= _COMPRESS_MIN and self._compression.worth():
            body = b"".join(parts)
            packed = lz4.block.compress(body, store_size=True)
            self._compression.record(size, len(packed))
            parts = [body]
            if len(packed) < size:
                parts, flags = [packed], flags | FrameFlag.LZ4
        # the parts go into the outgoing buffer one by one: a megabyte is copied once, not twice
        self._queue_parts(FrameKind.MUTATION, [struct.pack(">Q", seq), *parts], flags)

    def send_ack_now(self) -> None:
        self._require_ready()
        self._queue(FrameKind.ACK_NOW, b"", FrameFlag.IGNORABLE)

    def send_ack(self, kind: AckKind, seq: int) -> None:
        self._require_ready()
        self._queue(FrameKind.ACK, struct.pack(">BQ", kind, seq))

    def send_result(self, seq: int, body: bytes, *, final: bool) -> None:
        self._require_ready()
        self._queue(FrameKind.RESULT, struct.pack(">QB", seq, final) + body)

    def send_unsettled(self, paths: tuple[bytes, ...]) -> None:
        self._require_ready()
        out = Writer()
        out.u32(len(paths))
        for path in paths:
            out.blob(path)
        self._queue(FrameKind.UNSETTLED, out.bytes())

    def send_peer_state(self, state: PeerState) -> None:
        self._require_ready()
        out = Writer()
        out.text(state.generation)
        out.u8(state.complete)
        out.u8(state.served_alone)
        out.u32(len(state.paths))
        for path in state.paths:
            out.blob(path)
        self._queue(FrameKind.PEER_STATE, out.bytes())

    def send_error(self, reason: str) -> None:
        if self.state is not ConnectionState.CLOSED:
            self._queue(FrameKind.ERROR, reason.encode("utf-8", "replace")[:4096])
            self.state = ConnectionState.CLOSED

    # incoming -----------------------------------------------------------------------------

    def receive(self, data: bytes | bytearray | memoryview) -> list[ConnectionEvent]:
        """Feed bytes from the peer; returns what they meant, in order."""
        if self.state is ConnectionState.CLOSED:
            return []
        # Frames are read where they lie: from `data` itself when nothing was left over (the
        # common case: a read holds whole frames), and only what is left is kept. Copying
        # every read into the buffer first cost a copy of each replicated byte.
        if self._inbox:
            self._inbox += data
            source: bytes | bytearray | memoryview = self._inbox
        else:
            source = data
        events: list[ConnectionEvent] = []
        at = 0
        try:
            with memoryview(source) as view:
                while self.state is not ConnectionState.CLOSED:
                    frame = self._next_frame(view, at)
                    if frame is None:
                        break
                    kind, flags, body, at = frame
                    event = self._handle(kind, flags, body)
                    if event is not None:
                        events.append(event)
                if source is not self._inbox and self.state is not ConnectionState.CLOSED:
                    self._inbox += view[at:]  # a frame's beginning: kept for the next read
        except ProtocolError as exc:
            self._inbox.clear()
            self.send_error(str(exc))
            events.append(ConnectionFailed(str(exc)))
            return events
        if source is self._inbox:
            del self._inbox[:at]
        return events

    def _next_frame(self, view: memoryview, at: int) -> tuple[int, int, bytes, int] | None:
        """The frame starting at `at` in `view` and where the next one starts, or None: not
        all of it has arrived yet."""
        if self._opener is not None:
            return self._next_sealed_frame(self._opener, view, at)
        if len(view) - at < _HEADER.size:
            return None
        length, kind, flags = _HEADER.unpack_from(view, at)
        if length < 2 or length > MAX_FRAME:
            raise ProtocolError(f"frame length {length} out of bounds")
        if self.state is ConnectionState.HANDSHAKE:
            if kind not in (FrameKind.HELLO, FrameKind.AUTH, FrameKind.ERROR):
                raise ProtocolError(f"frame kind {kind} before authentication")
            if length > MAX_HANDSHAKE_FRAME:
                raise ProtocolError(f"handshake frame of {length} bytes: not a Tandem peer")
        end = at + _LENGTH.size + length
        if len(view) < end:
            return None
        return kind, flags, bytes(view[at + _HEADER.size : end]), end

    def _next_sealed_frame(
        self, opener: AESGCM, view: memoryview, at: int
    ) -> tuple[int, int, bytes, int] | None:
        if len(view) - at < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack_from(view, at)  # judged before any more is buffered
        if length < _KIND_FLAGS.size + _TAG or length > MAX_FRAME + _TAG:
            raise ProtocolError(f"sealed frame length {length} out of bounds")
        end = at + _LENGTH.size + length
        if len(view) < end:
            return None
        _, kind, flags = _HEADER.unpack_from(view, at)
        try:  # opened where it lies: no copy of the frame
            body = opener.decrypt(
                _NONCE.pack(self._opened),
                view[at + _HEADER.size : end],
                view[at : at + _HEADER.size],
            )
        except InvalidTag:
            raise ProtocolError(
                f"frame {self._opened} after the handshake failed authentication (altered, "
                "injected, replayed or reordered on the way)"
            ) from None
        self._opened += 1
        return kind, flags, body, end

    def _handle(self, kind: int, flags: int, body: bytes) -> ConnectionEvent | None:
        if kind == FrameKind.ERROR:
            self.state = ConnectionState.CLOSED
            return PeerError(body.decode("utf-8", "replace"))
        if self.state is ConnectionState.HANDSHAKE:
            if kind == FrameKind.HELLO and self._peer_hello is None:
                self._on_hello(body)
                return None
            if kind == FrameKind.AUTH and self._peer_hello is not None:
                return self._on_auth(body)
            raise ProtocolError(f"frame kind {kind} before authentication")
        if kind == FrameKind.MUTATION:
            if len(body) < 8:
                raise ProtocolError("mutation frame too short")
            (seq,) = struct.unpack_from(">Q", body)
            payload: bytes | memoryview = memoryview(body)[8:]
            if flags & FrameFlag.LZ4:
                if Feature.LZ4 not in self.agreed:
                    raise ProtocolError("compressed frame without agreeing on lz4")
                try:
                    payload = lz4.block.decompress(payload, uncompressed_size=-1)
                except (lz4.block.LZ4BlockError, ValueError) as exc:
                    raise ProtocolError(f"bad lz4 data: {exc}") from None
                if len(payload) > MAX_FRAME:
                    raise ProtocolError("decompressed frame too large")
            unhurried = bool(flags & FrameFlag.UNHURRIED)
            return MutationReceived(seq, decode_mutation(payload), unhurried)
        if kind == FrameKind.ACK_NOW:
            if body:
                raise ProtocolError("ACK_NOW frame with a body")
            return AckWanted()
        if kind == FrameKind.ACK:
            source = Reader(body)
            ack_kind, seq = source.u8(), source.u64()
            source.end()
            try:
                return Acknowledged(AckKind(ack_kind), seq)
            except ValueError:
                raise ProtocolError(f"unknown acknowledgement kind {ack_kind}") from None
        if kind == FrameKind.RESULT:
            if len(body) < 9 or body[8] > 1:
                raise ProtocolError("malformed result frame")
            (seq,) = struct.unpack_from(">Q", body)
            return QueryAnswered(seq, bool(body[8]), body[9:])
        if kind == FrameKind.UNSETTLED:
            return UnsettledPaths(decode_paths(Reader(body)))
        if kind == FrameKind.PEER_STATE:
            source = Reader(body)
            generation = source.text()
            complete, served_alone = source.u8(), source.u8()
            if complete > 1 or served_alone > 1:
                raise ProtocolError("bad boolean")
            return PeerState(generation, bool(complete), bool(served_alone), decode_paths(source))
        if flags & FrameFlag.IGNORABLE:
            return None
        raise ProtocolError(f"unknown frame kind {kind}")

    def _on_hello(self, body: bytes) -> None:
        hello = _decode_hello(body)
        low = max(self.versions[0], hello.version_min)
        high = min(self.versions[1], hello.version_max)
        if low > high:
            raise ProtocolError(
                f"no common protocol version: we speak {self.versions[0]}..{self.versions[1]}, "
                f"peer {hello.node!r} speaks {hello.version_min}..{hello.version_max}"
            )
        if hello.stream != self.identity.stream:
            raise ProtocolError(
                f"peer {hello.node!r} replicates module {hello.stream!r}, "
                f"not {self.identity.stream!r}"
            )
        if hello.nonce == self.nonce:
            raise ProtocolError("peer echoed our nonce")
        mine = self._keyring.ids()
        initiator, responder = (
            (mine, hello.key_ids) if self.side is Side.INITIATOR else (hello.key_ids, mine)
        )
        chosen = choose(initiator, responder)
        secret = self._keyring.by_id(chosen) if chosen is not None else None
        if secret is None:
            raise ProtocolError(
                f"peer {hello.node!r} failed authentication (wrong cluster secret?): it holds "
                "none of this node's secrets"
            )
        try:
            self._shared = self._exchange.exchange(
                X25519PublicKey.from_public_bytes(hello.exchange)
            )
        except ValueError:  # a low-order point: no secret would come of it
            raise ProtocolError(f"peer {hello.node!r} sent an unusable key exchange") from None
        self._chosen = secret
        self._peer_hello = hello
        self.version = high
        self.agreed = self.features & hello.features
        self._queue(FrameKind.AUTH, self._proof(self.side))

    def _transcript(self) -> bytes:
        assert self._peer_hello is not None
        mine, theirs = self._my_hello, self._peer_hello.raw
        first, second = (mine, theirs) if self.side is Side.INITIATOR else (theirs, mine)
        return struct.pack(">I", len(first)) + first + second

    def _proof(self, role: Side) -> bytes:
        return hmac.new(self._chosen, role.value + self._transcript(), hashlib.sha256).digest()

    def _on_auth(self, body: bytes) -> ConnectionEvent:
        assert self._peer_hello is not None
        peer_role = Side.RESPONDER if self.side is Side.INITIATOR else Side.INITIATOR
        if not hmac.compare_digest(body, self._proof(peer_role)):
            raise ProtocolError(
                f"peer {self._peer_hello.node!r} failed authentication (wrong cluster secret?)"
            )
        self.state = ConnectionState.READY
        outgoing, incoming = derive(self._chosen, self._shared, self._transcript())
        self._shared = b""
        if self.side is Side.RESPONDER:
            outgoing, incoming = incoming, outgoing
        self._sealer, self._opener = AESGCM(outgoing), AESGCM(incoming)
        assert self.version is not None
        return Authenticated(
            self._peer_hello.node, self._peer_hello.stream, self.version, self.agreed
        )
