"""The receiver's handling of connections that have not proved the secret: bounded in all and
per source, a flood from one address is refused at the door, one from many only evicts its own
oldest handshakes, and its log lines are summed up once the first few of a window are out."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tandem.engine.replication.strangers import Admission, RefusalLog


def _admit(admission: Admission, source: str) -> tuple[int, list[int]]:
    admitted = admission.admit(source)
    assert admitted is not None, f"{source} refused"
    return admitted


def test_a_flood_from_one_address_is_refused_beyond_its_share() -> None:
    admission = Admission(max_pending=8, per_source=4)
    _admit(admission, "198.18.0.1")  # the primary
    flood = [admission.admit("198.18.0.66") for _ in range(10_000)]
    assert flood[:4] == [(ticket, []) for ticket in range(2, 6)]
    assert flood[4:] == [None] * (10_000 - 4)  # refused at the door, nothing evicted
    assert len(admission) == 5  # the primary and the flooder's first four
    assert admission.admit("198.18.0.2") is not None  # another address still gets in
    admission.done(flood[0][0])  # type: ignore[index]  # one of the flooder's ends
    assert admission.admit("198.18.0.66") is not None  # its place is free again


def test_the_busiest_source_gives_way_when_the_total_is_reached() -> None:
    admission = Admission(max_pending=6, per_source=4)
    tickets = {
        source: [_admit(admission, source)[0] for _ in range(n)]
        for source, n in (("a", 1), ("b", 2), ("c", 3))
    }
    ticket, evicted = _admit(admission, "d")
    assert evicted == [tickets["c"][0]]  # c held the most: its oldest goes
    admission.done(ticket)
    admission.done(ticket)  # twice is harmless
    assert len(admission) == 5


@given(st.lists(st.tuples(st.sampled_from("abcde"), st.booleans()), max_size=300))
def test_the_bounds_always_hold(steps: list[tuple[str, bool]]) -> None:
    admission = Admission(max_pending=7, per_source=3)
    live: dict[int, str] = {}
    for source, finish_one in steps:
        held = sum(1 for s in live.values() if s == source)
        admitted = admission.admit(source)
        assert (admitted is None) == (held >= 3)  # refused exactly when it holds its share
        ticket, evicted = admitted or (None, [])
        for old in evicted:
            assert old in live
            del live[old]
        if ticket is not None:
            live[ticket] = source
        if finish_one and live:
            first = next(iter(live))
            admission.done(first)
            del live[first]
        assert len(admission) == len(live) <= 7
        for name in "abcde":
            assert sum(1 for s in live.values() if s == name) <= 3


def test_refusals_beyond_the_first_few_are_summed_up_once_a_window() -> None:
    refusals = RefusalLog(window=10.0, logged_per_window=2)
    logged = [refusals.record(float(i) / 1000, "too slow", "198.18.0.9") for i in range(5000)]
    assert logged[:2] == [True, True] and not any(logged[2:])
    assert refusals.summary(5.0) is None  # the window is not over
    line = refusals.summary(11.0)
    assert line is not None and "4998 more connections" in line and "198.18.0.9 (4998)" in line
    assert refusals.summary(30.0) is None  # nothing new
    assert refusals.record(31.0, "refused", "198.18.0.1") is True  # a new window logs again
