"""The failover timing rule, swept over every phase (issue 13, point 4): in a partition that
leaves the witness on the secondary's side, the isolated primary fences itself before the
earliest instant its peer may serve — whatever the heartbeats' and the probes' phases, the
witness's latency and the watch loop's tick — and well before it could acknowledge a write
alone (the replication timeout, at least 2 x heartbeat timeout + 1 s)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.engine.config.modules import WITNESS_TIMEOUT
from tandem.engine.failover.timing import SELF_FENCE_AT, Timing
from tandem.engine.failover.watcher import WATCH_EVERY
from tandem.engine.failover.witness import WITNESS_PROBE_EVERY, WITNESS_PROBE_TIMEOUT

TICK_DELAY = 0.01  # the watch loop re-reads the socket once before believing a silence


def _last_before(phase: float, every: float, moment: float) -> float:
    """The last instant ``phase + k*every`` before ``moment``."""
    return phase + math.floor((moment - phase) / every - 1e-12) * every


def _ticks(phase: float, every: float, start: float, end: float) -> list[float]:
    first = phase + math.ceil((start - phase) / every) * every
    return [first + k * every for k in range(int((end - first) / every) + 2)]


def _answered(probe_phase: float, latency: float, now: float, cut: float | None) -> float | None:
    """Send time of the latest probe answered by ``now`` (none sent at or after ``cut``)."""
    if latency > WITNESS_PROBE_TIMEOUT:
        return None
    latest_sent = _last_before(probe_phase, WITNESS_PROBE_EVERY, now - latency + 1e-12)
    if cut is not None and latest_sent >= cut:
        latest_sent = _last_before(probe_phase, WITNESS_PROBE_EVERY, cut)
    return latest_sent


@settings(max_examples=3000, deadline=None)
@given(
    timeout=st.floats(0.25, 3.0),
    interval_share=st.floats(0.1, 0.3),
    beats_a=st.floats(0, 1),
    beats_b=st.floats(0, 1),
    probes_a=st.floats(0, 1),
    probes_b=st.floats(0, 1),
    ticks_a=st.floats(0, 1),
    ticks_b=st.floats(0, 1),
    latency_a=st.floats(0, 0.05),
    latency_b=st.floats(0, 0.05),
    partition=st.floats(10, 20),
)
def test_an_isolated_primary_fences_before_its_peer_may_serve(
    timeout: float,
    interval_share: float,
    beats_a: float,
    beats_b: float,
    probes_a: float,
    probes_b: float,
    ticks_a: float,
    ticks_b: float,
    latency_a: float,
    latency_b: float,
    partition: float,
) -> None:
    interval = timeout * interval_share
    timing = Timing(timeout, interval, WATCH_EVERY)
    # each node last heard the other's last heartbeat sent before the partition
    a_heard = _last_before(beats_b * interval, interval, partition)
    b_heard = _last_before(beats_a * interval, interval, partition)
    # a (serving) loses the witness with the partition; b keeps it
    fence = next(
        t + TICK_DELAY
        for t in _ticks(ticks_a * WATCH_EVERY, WATCH_EVERY, partition, partition + 3 * timeout)
        if timing.must_fence(
            t + TICK_DELAY, a_heard, _answered(probes_a, latency_a, t + TICK_DELAY, partition)
        )
    )
    # the earliest b may serve: its first tick past the timeout, if an answer to a probe sent
    # since the silence is already there (otherwise it asks once more, which is later still)
    takeover = next(
        t
        for t in _ticks(ticks_b * WATCH_EVERY, WATCH_EVERY, partition, partition + 5 * timeout)
        if t - b_heard > timeout
    )
    answered_b = _answered(probes_b, latency_b, takeover, None)
    if not timing.may_take_over(takeover, b_heard, answered_b):
        takeover += latency_b
    assert fence < takeover, (fence - partition, takeover - partition)
    assert fence - a_heard <= SELF_FENCE_AT * timeout + WATCH_EVERY + TICK_DELAY + 1e-9
    # and long before a could acknowledge alone: its replication timeout is at least this
    assert fence < partition + 2 * timeout + WITNESS_TIMEOUT


def test_no_answer_since_the_silence_means_fence_and_an_answer_means_stay() -> None:
    timing = Timing(1.0, 0.2, WATCH_EVERY)
    assert not timing.must_fence(10.5, 10.0, None)  # not silent long enough
    assert timing.must_fence(10.61, 10.0, None)
    assert timing.must_fence(10.61, 10.0, 10.1)  # sent before the silence began
    assert not timing.must_fence(10.61, 10.0, 10.21)  # answered a probe sent since
    assert not timing.may_take_over(11.0, 10.0, 10.5)  # not lost yet
    assert not timing.may_take_over(11.01, 10.0, 10.1)  # no answer since the silence
    assert timing.may_take_over(11.01, 10.0, 10.4)
