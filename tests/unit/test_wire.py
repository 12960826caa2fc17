"""The sans-IO replication protocol: handshake, authentication, every mutation kind, acks,
compression, and every kind of bad input ending the connection cleanly."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.engine.protocol.codec import ProtocolError
from tandem.engine.protocol.connection import (
    MAX_FRAME,
    PROTOCOL_VERSION,
    AckKind,
    Acknowledged,
    AckWanted,
    Authenticated,
    Connection,
    ConnectionFailed,
    ConnectionState,
    Feature,
    FrameFlag,
    FrameKind,
    Identity,
    MutationReceived,
    PeerError,
    PeerState,
    QueryAnswered,
    Side,
    UnsettledPaths,
)
from tandem.engine.protocol.items import StreamItem, decode_mutation, encode_mutation
from tandem.engine.protocol.queries import Finish, HashQuery, ListQuery, ProgressNote
from tandem.engine.protocol.repairs import Ensure, LinkIfPresent, Move, RemoveTree, SetXattrs
from tandem.fsdriver.mutation import (
    Allocate,
    CreateFile,
    MakeDirectory,
    MakeHardLink,
    MakeNode,
    MakeSymlink,
    Mutation,
    RemoveDirectory,
    RemoveXattr,
    Rename,
    SetAttributes,
    SetXattr,
    Stamp,
    Sync,
    Unlink,
    Write,
)

SECRET = b"correct horse battery staple"


def pair(
    secret_a: bytes = SECRET,
    secret_b: bytes = SECRET,
    features_a: Feature = Feature.LZ4,
    features_b: Feature = Feature.LZ4,
) -> tuple[Connection, Connection]:
    a = Connection(Side.INITIATOR, Identity("a", "data"), secret_a, features=features_a)
    b = Connection(Side.RESPONDER, Identity("b", "data"), secret_b, features=features_b)
    return a, b


def pump(a: Connection, b: Connection) -> tuple[list[object], list[object]]:
    """Move bytes both ways until neither side has anything to send."""
    got_a: list[object] = []
    got_b: list[object] = []
    while True:
        to_b, to_a = a.bytes_to_send(), b.bytes_to_send()
        if not to_a and not to_b:
            return got_a, got_b
        got_b += b.receive(to_b)
        got_a += a.receive(to_a)


def test_handshake_authenticates_both_sides() -> None:
    a, b = pair()
    got_a, got_b = pump(a, b)
    assert got_a == [Authenticated("b", "data", PROTOCOL_VERSION, Feature.LZ4)]
    assert got_b == [Authenticated("a", "data", PROTOCOL_VERSION, Feature.LZ4)]
    assert a.state is b.state is ConnectionState.READY


@pytest.mark.parametrize("wrong", ["initiator", "responder"])
def test_wrong_secret_replicates_nothing(wrong: str) -> None:
    a, b = pair(
        secret_a=b"guess" if wrong == "initiator" else SECRET,
        secret_b=b"guess" if wrong == "responder" else SECRET,
    )
    got_a, got_b = pump(a, b)
    events = got_a + got_b
    assert not any(isinstance(e, Authenticated) for e in events)
    assert any(
        isinstance(e, ConnectionFailed) and "failed authentication" in e.reason for e in events
    )
    assert a.state is ConnectionState.CLOSED and b.state is ConnectionState.CLOSED
    with pytest.raises(RuntimeError):
        a.send_mutation(1, Unlink(b"x"))


def test_nothing_is_accepted_before_authentication() -> None:
    a, b = pair()
    b.bytes_to_send()  # discard b's hello: a never learns b's nonce
    a.bytes_to_send()
    rogue = Connection(Side.INITIATOR, Identity("rogue", "data"), b"no secret")
    rogue.bytes_to_send()
    frame = encode_mutation(Unlink(b"precious"))
    raw = struct.pack(">IBB", len(frame) + 10, FrameKind.MUTATION, 0) + struct.pack(">Q", 1) + frame
    events = b.receive(raw)
    assert events == [ConnectionFailed("frame kind 3 before authentication")]
    assert b.state is ConnectionState.CLOSED


def test_reflected_proof_is_rejected() -> None:
    """A man in the middle echoing the responder's own HELLO and AUTH back must fail."""
    _, b = pair()
    hello_and_auth_from_b = b.bytes_to_send()
    events = b.receive(hello_and_auth_from_b)
    assert isinstance(events[-1], ConnectionFailed)
    assert b.state is ConnectionState.CLOSED


def test_version_ranges_are_negotiated_or_refused() -> None:
    a = Connection(Side.INITIATOR, Identity("a", "data"), SECRET, versions=(1, 3))
    b = Connection(Side.RESPONDER, Identity("b", "data"), SECRET, versions=(2, 5))
    got_a, _ = pump(a, b)
    assert got_a == [Authenticated("b", "data", 3, Feature.LZ4)]

    old = Connection(Side.INITIATOR, Identity("old", "data"), SECRET, versions=(1, 1))
    new = Connection(Side.RESPONDER, Identity("new", "data"), SECRET, versions=(2, 2))
    got_old, got_new = pump(old, new)
    reasons = [e.reason for e in got_old + got_new if isinstance(e, ConnectionFailed | PeerError)]
    assert any("no common protocol version" in r for r in reasons)
    assert old.state is ConnectionState.CLOSED and new.state is ConnectionState.CLOSED


def test_peer_of_another_module_is_refused() -> None:
    a = Connection(Side.INITIATOR, Identity("a", "web"), SECRET)
    b = Connection(Side.RESPONDER, Identity("b", "db"), SECRET)
    got_a, got_b = pump(a, b)
    assert any(isinstance(e, ConnectionFailed) and "module" in e.reason for e in got_a + got_b)


def test_not_a_tandem_peer() -> None:
    _, b = pair()
    events = b.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(events) == 1 and isinstance(events[0], ConnectionFailed)
    assert b.state is ConnectionState.CLOSED
    assert b.receive(b"more garbage") == []


EVERY_KIND: list[StreamItem] = [
    Write(b"d/f", 2**40, b"\x00data" * 100, (Stamp(b"d/f", -1, 2**62),)),
    SetAttributes(b"f", mode=0o4755, uid=None, gid=7, size=0),
    CreateFile(b"f", 0o640, 1000, 1000, (Stamp(b"f", 1, 2), Stamp(b".", 3, 4))),
    MakeDirectory(b"d", 0o2775, 0, 50),
    MakeNode(b"fifo", 0o10644, 0, 1, 1),
    MakeSymlink(b"s", b"../../anything/even/outside", 0, 0),
    MakeHardLink(b"f", b"d/g"),
    Unlink(b"d/g"),
    RemoveDirectory(b"d"),
    Rename(b"a", b"b", 2),
    SetXattr(b".", b"user.k", b"\xff" * 3000),
    RemoveXattr(b"f", b"security.capability"),
    Sync(b"f", data_only=True),
    Ensure(b"d/l", 0o120777, 5, 6, 0, b"target", fresh=True),
    RemoveTree(b"d"),
    SetXattrs(b"f", ((b"user.a", b""), (b"user.b", b"\x00" * 10))),
    Move(b"a", b"b/c", 0),
    LinkIfPresent(b"a", b"b"),
    ListQuery(b"."),
    HashQuery(b"f", 4096, 2**40, 65536),
    Finish(b"0123abcd", 7),
    ProgressNote(b'{"how": "tracked", "bytes_done": 4096}'),
    Allocate(b"f", 0x03, 4096, 2**40, (Stamp(b"f", 5, 6),)),
]


def test_every_mutation_kind_crosses_the_wire_with_its_sequence() -> None:
    a, b = pair()
    pump(a, b)
    for seq, mutation in enumerate(EVERY_KIND, start=1):
        a.send_mutation(seq, mutation)
    _, got_b = pump(a, b)
    assert got_b == [MutationReceived(seq, m) for seq, m in enumerate(EVERY_KIND, start=1)]
    assert {type(m) for m in EVERY_KIND} == set(type(m) for m in EVERY_KIND)  # one per kind
    assert len({type(m) for m in EVERY_KIND}) == 23


def test_acks_of_each_kind() -> None:
    a, b = pair()
    pump(a, b)
    b.send_ack(AckKind.RECEIVED, 10)
    b.send_ack(AckKind.APPLIED, 9)
    b.send_ack(AckKind.DURABLE, 7)
    got_a, _ = pump(a, b)
    assert got_a == [
        Acknowledged(AckKind.RECEIVED, 10),
        Acknowledged(AckKind.APPLIED, 9),
        Acknowledged(AckKind.DURABLE, 7),
    ]


def test_an_unhurried_mutation_and_ack_now_cross_the_wire() -> None:
    a, b = pair()
    pump(a, b)
    compressible = Write(b"f", 0, b"A" * 100_000)
    a.send_mutation(1, Write(b"f", 0, b"x"), unhurried=True)
    a.send_mutation(2, compressible, unhurried=True)  # compressed too: both flags
    a.send_mutation(3, Write(b"f", 0, b"y"))
    a.send_ack_now()
    _, got_b = pump(a, b)
    assert got_b == [
        MutationReceived(1, Write(b"f", 0, b"x"), unhurried=True),
        MutationReceived(2, compressible, unhurried=True),
        MutationReceived(3, Write(b"f", 0, b"y"), unhurried=False),
        AckWanted(),
    ]
    a._queue_parts(FrameKind.ACK_NOW, [b"x"], FrameFlag.IGNORABLE)
    assert b.receive(a.bytes_to_send()) == [ConnectionFailed("ACK_NOW frame with a body")]


@pytest.mark.parametrize(
    ("fa", "fb", "compressed"), [(Feature.LZ4, Feature.LZ4, True), (Feature.LZ4, Feature(0), False)]
)
def test_compression_only_when_both_offer_it(fa: Feature, fb: Feature, compressed: bool) -> None:
    a, b = pair(features_a=fa, features_b=fb)
    pump(a, b)
    mutation = Write(b"f", 0, b"A" * 100_000)
    a.send_mutation(1, mutation)
    raw = a.bytes_to_send()
    assert (len(raw) < 10_000) is compressed
    assert b.receive(raw) == [MutationReceived(1, mutation)]


def test_incompressible_data_stops_being_compressed_but_is_probed_again() -> None:
    a, b = pair()
    pump(a, b)
    seq = 0

    def frame_size(data: bytes) -> int:
        nonlocal seq
        seq += 1
        mutation = Write(b"f", 0, data)
        a.send_mutation(seq, mutation)
        raw = a.bytes_to_send()
        assert b.receive(raw) == [MutationReceived(seq, mutation)]
        return len(raw)

    compressible = b"A" * 8192
    assert frame_size(compressible) < 1000
    for _ in range(8):  # media or encrypted files: compressing them is wasted time
        assert frame_size(os.urandom(8192)) > 8192
    skipped = [frame_size(compressible) for _ in range(70)]
    assert skipped[0] > 8192, "tried again right after a run of failures"
    probed = [i for i, size in enumerate(skipped) if size < 1000]
    assert probed, "never tried again"
    assert all(size < 1000 for size in skipped[probed[0] :]), "a success resumes compression"


def test_frames_split_anywhere_are_reassembled() -> None:
    a, b = pair()
    pump(a, b)
    for seq, mutation in enumerate(EVERY_KIND, start=1):
        a.send_mutation(seq, mutation)
    raw = a.bytes_to_send()
    events: list[object] = []
    for i in range(len(raw)):
        events += b.receive(raw[i : i + 1])
    assert [e.seq for e in events if isinstance(e, MutationReceived)] == list(
        range(1, len(EVERY_KIND) + 1)
    )


BIG = Write(b"big", 0, os.urandom(300_000))  # incompressible: a frame of its own size


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(0, 400_000), max_size=12), as_views=st.booleans())
def test_reads_cut_anywhere_give_the_same_events_as_whole_ones(
    cuts: list[int], as_views: bool
) -> None:
    """A read may end anywhere — inside a big sealed frame, inside a header, between
    frames — and may be a view of a buffer the caller reuses: the events are those of the
    whole stream, in order."""
    a, b = pair()
    pump(a, b)
    events: list[object] = []
    for seq, mutation in enumerate([*EVERY_KIND, BIG, *EVERY_KIND], start=1):
        a.send_mutation(seq, mutation)
    raw = bytes(a.bytes_to_send())
    reused = bytearray(len(raw))
    previous = 0
    for cut in [*sorted(c % (len(raw) + 1) for c in cuts), len(raw)]:
        piece = raw[previous:cut]
        if as_views:
            reused[: len(piece)] = piece
            with memoryview(reused) as view:
                events += b.receive(view[: len(piece)])
            reused[: len(piece)] = b"\xff" * len(piece)  # the caller reuses its buffer
        else:
            events += b.receive(piece)
        previous = cut
    received = [e for e in events if isinstance(e, MutationReceived)]
    assert [e.seq for e in received] == list(range(1, 2 * len(EVERY_KIND) + 2))
    assert received[len(EVERY_KIND)].mutation == BIG


def _ready_pair() -> tuple[Connection, Connection]:
    a, b = pair()
    pump(a, b)
    return a, b


def test_oversized_frame_ends_the_connection_before_buffering_it() -> None:
    _, b = _ready_pair()
    events = b.receive(struct.pack(">I", MAX_FRAME + 17))
    assert events == [ConnectionFailed(f"sealed frame length {MAX_FRAME + 17} out of bounds")]


def test_a_stranger_announcing_a_big_frame_is_refused_from_its_header_alone() -> None:
    # random bytes announce a length within MAX_FRAME once in 512 tries: waiting for that body
    # would hold the connection until the handshake timeout instead of refusing at once
    _, b = pair()
    header = struct.pack(">IBB", MAX_FRAME - 1, FrameKind.HELLO, 0)
    assert b.receive(header) == [
        ConnectionFailed(f"handshake frame of {MAX_FRAME - 1} bytes: not a Tandem peer")
    ]
    assert b.state is ConnectionState.CLOSED


def test_unknown_frames_end_the_connection_unless_ignorable() -> None:
    a, b = _ready_pair()
    a._queue_parts(99, [b"abc"], FrameFlag.IGNORABLE)  # what a later release might send
    assert b.receive(a.bytes_to_send()) == []
    assert b.state is ConnectionState.READY
    a._queue_parts(99, [b"abc"], 0)
    events = b.receive(a.bytes_to_send())
    assert events == [ConnectionFailed("unknown frame kind 99")]


@pytest.mark.parametrize(
    "path",
    [b"/etc/passwd", b"../escape", b"a/../../b", b"a//b", b"", b"a/./b", b"nul\0byte"],
)
def test_paths_that_leave_the_directory_are_refused(path: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_mutation(encode_mutation(Unlink(path)))


def test_a_stalled_peer_mid_frame_yields_nothing_and_keeps_state() -> None:
    a, b = _ready_pair()
    a.send_mutation(1, Write(b"f", 0, b"x" * 1000))
    raw = a.bytes_to_send()
    assert b.receive(raw[:-1]) == []
    assert (
        b.state is ConnectionState.READY
    )  # nothing half-applied; the timeout is the caller's business
    assert b.receive(raw[-1:]) == [MutationReceived(1, Write(b"f", 0, b"x" * 1000))]


paths = st.lists(st.sampled_from([b"a", b"bb", b"dir", b"\xffname"]), min_size=1, max_size=4).map(
    b"/".join
)
stamps = st.lists(
    st.builds(Stamp, paths, st.integers(-(2**63), 2**63 - 1), st.integers(-(2**63), 2**63 - 1)),
    max_size=3,
).map(tuple)
u32 = st.integers(0, 2**32 - 1)
mutations = st.one_of(
    st.builds(Write, paths, st.integers(0, 2**63 - 1), st.binary(max_size=2000), stamps),
    st.builds(
        SetAttributes,
        paths,
        st.none() | u32,
        st.none() | u32,
        st.none() | u32,
        st.none() | u32,
        stamps,
    ),
    st.builds(CreateFile, paths, u32, u32, u32, stamps),
    st.builds(MakeDirectory, paths, u32, u32, u32, stamps),
    st.builds(MakeNode, paths, u32, u32, u32, u32, stamps),
    st.builds(MakeSymlink, paths, st.binary(min_size=1, max_size=100), u32, u32, stamps),
    st.builds(MakeHardLink, paths, paths, stamps),
    st.builds(Unlink, paths, stamps),
    st.builds(RemoveDirectory, paths, stamps),
    st.builds(Rename, paths, paths, st.sampled_from([0, 1, 2]), stamps),
    st.builds(SetXattr, paths, st.binary(min_size=1, max_size=50), st.binary(max_size=500), stamps),
    st.builds(RemoveXattr, paths, st.binary(min_size=1, max_size=50), stamps),
    st.builds(Sync, paths, st.booleans(), stamps),
    st.builds(Allocate, paths, st.integers(0, 0x3F), st.integers(0, 2**62), u32, stamps),
    st.builds(Ensure, paths, u32, u32, u32, u32, st.binary(max_size=50), st.booleans(), stamps),
    st.builds(RemoveTree, paths, stamps),
    st.builds(
        SetXattrs,
        paths,
        st.lists(st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=50))).map(tuple),
        stamps,
    ),
    st.builds(Move, paths, paths, st.sampled_from([0, 2]), stamps),
    st.builds(LinkIfPresent, paths, paths, stamps),
    st.builds(ProgressNote, st.binary(max_size=200)),
    st.builds(HashQuery, paths, st.integers(0, 2**63), st.integers(0, 2**63), u32),
)


@given(mutations)
def test_codec_round_trip(mutation: StreamItem) -> None:
    assert decode_mutation(encode_mutation(mutation)) == mutation


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_garbage_never_crashes_a_ready_connection(garbage: bytes) -> None:
    _, b = _ready_pair()
    for event in b.receive(garbage):
        assert isinstance(
            event,
            ConnectionFailed
            | MutationReceived
            | Acknowledged
            | PeerError
            | QueryAnswered
            | UnsettledPaths
            | PeerState,
        )


@given(mutations, st.integers(0, 200), st.integers(0, 255))
def test_a_corrupted_mutation_frame_is_refused_or_decodes_cleanly(
    mutation: Mutation, at: int, value: int
) -> None:
    body = bytearray(encode_mutation(mutation))
    body[at % len(body)] = value
    try:
        decode_mutation(bytes(body))
    except ProtocolError:
        pass


@given(mutations)
def test_a_truncated_or_padded_mutation_is_refused(mutation: Mutation) -> None:
    body = encode_mutation(mutation)
    for cut in range(len(body)):
        with pytest.raises(ProtocolError):
            decode_mutation(body[:cut])
    with pytest.raises(ProtocolError):
        decode_mutation(body + b"\0")


def test_resync_frames_cross_the_wire() -> None:
    a, b = pair()
    pump(a, b)
    state = PeerState("5f1e", True, False, (b"x", b"d/y"))
    b.send_peer_state(state)
    b.send_unsettled((b"d/z",))
    b.send_result(3, b"part one", final=False)
    b.send_result(3, b"", final=True)
    got_a, _ = pump(a, b)
    assert got_a == [
        state,
        UnsettledPaths((b"d/z",)),
        QueryAnswered(3, False, b"part one"),
        QueryAnswered(3, True, b""),
    ]


@pytest.mark.parametrize("path", [b"/etc", b"a/../../b", b""])
def test_a_peer_cannot_name_paths_outside_the_copy_in_resync_frames(path: bytes) -> None:
    a, b = pair()
    pump(a, b)
    b.send_unsettled((path,))
    got_a, _ = pump(a, b)
    assert isinstance(got_a[0], ConnectionFailed)
    assert a.state is ConnectionState.CLOSED


def test_garbage_right_behind_the_peer_state_ends_the_handshake() -> None:
    """Found by a flaky run: PEER_STATE and the garbage behind it came in one read, and the
    garbage's ConnectionFailed was dropped with the rest of the read."""
    import socket

    import trio

    from tandem.engine.protocol.handshake import HandshakeFailed, authenticate, expect

    async def scenario() -> None:
        left, right = socket.socketpair()
        a = Connection(Side.INITIATOR, Identity("a", "data"), SECRET)
        b = Connection(Side.RESPONDER, Identity("b", "data"), SECRET)
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(left))
        # the peer's whole side at once: its HELLO, then (once it has ours) AUTH, PEER_STATE
        # and garbage, all in one send
        b.receive(a.bytes_to_send())
        hello = b.bytes_to_send()
        a.receive(hello)
        b.receive(a.bytes_to_send())
        b.send_peer_state(PeerState("", False, False, ()))
        right.sendall(b.bytes_to_send() + b"\xff" * 64)
        # a's twin (same nonce and key exchange, so the same HELLO): b's proof checks out
        fresh = Connection(
            Side.INITIATOR, Identity("a", "data"), SECRET, nonce=a.nonce, _exchange=a._exchange
        )
        fresh.receive(hello)
        fresh.bytes_to_send()
        with pytest.raises(HandshakeFailed):
            _, pending = await authenticate(stream, fresh)
            await expect(stream, fresh, PeerState, pending)
        right.close()
        await stream.aclose()

    trio.run(scenario)
