"""Heartbeat packets and the failure detector, with a mock clock: authentic packets only, no
replay (also across networks and runs), and a peer lost only when every network is silent."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tandem.heartbeat.detector import FailureDetector, Verdict
from tandem.heartbeat.packet import (
    MAX_PAYLOAD,
    REPLAY_WINDOW,
    BadPacket,
    BeatChecker,
    Heartbeat,
    decode,
    encode,
)

SECRET = b"0123456789abcdef-cluster"


def test_round_trip_and_every_tampered_byte_is_caught() -> None:
    beat = Heartbeat("alpha", 1_700_000_000_000_000_000, 42, b'{"web": "PRIM"}')
    data = encode(SECRET, beat)
    assert decode(SECRET, data) == beat
    for index in range(len(data)):
        tampered = bytearray(data)
        tampered[index] ^= 0x01
        with pytest.raises(BadPacket):
            decode(SECRET, bytes(tampered))


@given(st.binary(max_size=300))
def test_garbage_is_rejected_never_crashes(data: bytes) -> None:
    with pytest.raises(BadPacket):
        decode(SECRET, data)


def test_another_secret_is_forged_and_a_bad_version_is_named() -> None:
    data = encode(b"another-cluster-secret", Heartbeat("alpha", 1, 1))
    with pytest.raises(BadPacket) as caught:
        decode(SECRET, data)
    assert caught.value.kind == "forged"
    with pytest.raises(ValueError):
        encode(SECRET, Heartbeat("alpha", 1, 1, b"x" * (MAX_PAYLOAD + 1)))


def test_replays_are_rejected_and_counted() -> None:
    receiver = BeatChecker(SECRET, {"alpha"})
    beats = [encode(SECRET, Heartbeat("alpha", 100, seq)) for seq in range(1, 200)]
    assert receiver.take("net1", beats[0]) is not None
    assert receiver.take("net2", beats[0]) is not None  # the same beat on the other network
    assert receiver.take("net1", beats[0]) is None  # heard here already
    for data in beats[1:150]:
        assert receiver.take("net1", data) is not None
    assert receiver.take("net2", beats[20]) is None  # far behind the newest: a replay
    assert receiver.take("net2", beats[149]) is not None  # recent, new on this network
    older_run = encode(SECRET, Heartbeat("alpha", 99, 500))
    assert receiver.take("net1", older_run) is None
    assert receiver.take("net1", encode(SECRET, Heartbeat("mallory", 100, 1))) is None
    assert receiver.take("net1", encode(b"wrong-secret-0123", Heartbeat("alpha", 100, 300))) is None
    assert receiver.rejected == {"replayed": 3, "stranger": 1, "forged": 1}
    # the peer restarted: a later run starts its numbers again and is believed at once
    assert receiver.take("net1", encode(SECRET, Heartbeat("alpha", 101, 1))) is not None
    assert receiver.take("net1", beats[198]) is None  # the previous run is over
    assert REPLAY_WINDOW < 130


def test_the_peer_is_lost_only_when_every_network_is_silent() -> None:
    detector = FailureDetector(["net1", "net2"], timeout=1.0, started_at=0.0)
    assert detector.verdict(0.5) is Verdict.UNKNOWN
    assert detector.verdict(1.5) is Verdict.LOST  # never heard, timeout passed
    detector.heard("net1", 2.0)
    detector.heard("net2", 2.1)
    assert detector.verdict(2.5) is Verdict.ALIVE
    detector.heard("net1", 2.9)
    detector.heard("net1", 3.8)  # net2 went quiet at 2.1
    assert detector.verdict(3.5) is Verdict.DEGRADED
    assert detector.verdict(4.7) is Verdict.DEGRADED  # net1 heard 0.9 s ago
    assert detector.verdict(4.9) is Verdict.LOST
    assert detector.lost_at() == pytest.approx(4.8)
    statuses = {s.network: s.silent_for for s in detector.statuses(4.0)}
    assert statuses == {"net1": 0.2, "net2": 1.9}
    with pytest.raises(ValueError):
        detector.heard("net3", 5.0)


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.floats(0, 100)), max_size=40))
def test_lost_means_silent_everywhere_for_the_timeout(events: list[tuple[str, float]]) -> None:
    detector = FailureDetector(["a", "b"], timeout=3.0, started_at=0.0)
    last: dict[str, float] = {}
    for network, when in sorted(events, key=lambda e: e[1]):
        detector.heard(network, when)
        last[network] = when
    now = 105.0
    silent_everywhere = all(now - last.get(n, -1e9) > 3.0 for n in ("a", "b"))
    assert (detector.verdict(now) is Verdict.LOST) == silent_everywhere
