"""RESULT bodies (listings, block hashes): big-endian from protocol 4, little-endian for a peer
that agreed on 3, and a node of each release replicating together."""

from __future__ import annotations

import stat
import struct
from array import array

import pytest

from tandem.engine.protocol.connection import (
    OLDEST_VERSION,
    PROTOCOL_VERSION,
    Connection,
    ConnectionFailed,
    Identity,
    Side,
)
from tandem.engine.protocol.results import (
    FOUND,
    BlockHashes,
    Entry,
    SurveyError,
    decode_entries,
    decode_hashes,
    encode_entries,
    encode_hashes,
)

SECRET = b"correct horse battery staple"
ENTRIES = [
    Entry(b"", stat.S_IFDIR | 0o755, 0, 0, 4096, 1, 0, 0, 2),
    Entry(b"f", stat.S_IFREG | 0o644, 1000, 1000, 70_000, 2, 0, 7, 1, b"", 99),
    Entry(b"l", stat.S_IFLNK | 0o777, 0, 0, 3, 3, 0, 0, 1, b"f"),
]
HASHES = BlockHashes(FOUND, 8192, array("Q", [1, 2**63 + 5]), ino=42, nlink=3)


@pytest.mark.parametrize("version", [OLDEST_VERSION, PROTOCOL_VERSION])
def test_listings_and_hashes_round_trip_in_each_version(version: int) -> None:
    assert decode_entries(encode_entries(ENTRIES, version), version) == ENTRIES
    assert decode_entries(encode_entries(None, version), version) is None
    assert decode_hashes(encode_hashes(HASHES, version), version) == HASHES


def test_version_4_is_big_endian_and_version_3_little_endian() -> None:
    new = encode_hashes(HASHES, 4)
    old = encode_hashes(HASHES, 3)
    assert struct.unpack_from(">BQ", new) == (FOUND, 8192)
    assert struct.unpack_from("<BQ", old) == (FOUND, 8192)
    assert new[-8:] == struct.pack(">Q", 2**63 + 5)
    assert old[-8:] == struct.pack("<Q", 2**63 + 5)
    # the first field of a listing is the name's length: 1 for b"f"
    listing = encode_entries(ENTRIES[1:2], 4)
    assert struct.unpack_from(">H", listing) == (1,)
    # read with the wrong order, a body does not pass for a valid one
    with pytest.raises(SurveyError):
        decode_hashes(new, 3)


def test_a_node_of_a_plaintext_release_is_refused_with_the_versions_named() -> None:
    # releases before 5 sent the stream in clear: offering theirs would let anyone on the path
    # choose it, so the pair does not replicate until both run a sealed release
    old = Connection(Side.INITIATOR, Identity("old", "data"), SECRET, versions=(3, 4))
    new = Connection(Side.RESPONDER, Identity("new", "data"), SECRET)
    got_old: list[object] = []
    got_new: list[object] = []
    for _ in range(4):
        got_new += new.receive(old.bytes_to_send())
        got_old += old.receive(new.bytes_to_send())
    assert [type(e) for e in got_new] == [ConnectionFailed]
    assert "we speak 5..6, peer 'old' speaks 3..4" in got_new[0].reason  # type: ignore[attr-defined]
    two_new = Connection(Side.INITIATOR, Identity("a", "data"), SECRET)
    other = Connection(Side.RESPONDER, Identity("b", "data"), SECRET)
    for _ in range(4):
        other.receive(two_new.bytes_to_send())
        two_new.receive(other.bytes_to_send())
    assert two_new.agreed_version == other.agreed_version == PROTOCOL_VERSION
