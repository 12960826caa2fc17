"""What `tandem state` says of a module that fails over: how long it has been in its state (a
reason like "the peer was lost; took over" is history after an hour), and how old the peer's
state is — also once the peer is lost, when only its last word is left."""

from __future__ import annotations

from typing import Any

import pytest

from tandem.engine.cli.operate import _duration, describe_failover, describe_stream


def _failover(**peer: Any) -> dict[str, Any]:
    return {
        "running": True,
        "state": "ALONE",
        "node": "b",
        "reason": "the peer was lost; took over",
        "for_s": 3725.0,
        "vip": None,
        "peer": {
            "node": "a",
            "heartbeat": {"verdict": "lost"},
            "state": None,
            "reason": None,
            "heard_s_ago": None,
            "last_state": None,
            **peer,
        },
    }


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (0.24, "0.2 s"),
        (12.4, "12 s"),
        (125, "2 min 5 s"),
        (3725, "1 h 2 min"),
        (200_000, "2 days 7 h"),
    ],
)
def test_durations_read_as_an_operator_reads_them(seconds: float, said: str) -> None:
    assert _duration(seconds) == said


def test_the_state_says_since_when() -> None:
    text = describe_failover(_failover())
    assert text.splitlines()[0] == "ALONE on b for 1 h 2 min (the peer was lost; took over)"
    assert text.splitlines()[1] == "  peer a: not heard (heartbeat lost)"


def test_a_lost_peer_s_last_word_is_shown_with_its_age() -> None:
    text = describe_failover(_failover(heard_s_ago=42.0, last_state="PRIM"))
    assert text.splitlines()[1] == "  peer a: not heard for 42 s (last heard PRIM; heartbeat lost)"


def test_a_heard_peer_s_state_carries_its_age_once_it_is_not_fresh() -> None:
    fresh = _failover(state="SECOND", reason="in sync", heard_s_ago=0.2, last_state="SECOND")
    fresh["peer"]["heartbeat"]["verdict"] = "alive"
    assert describe_failover(fresh).splitlines()[1] == "  peer a: SECOND (in sync); heartbeat alive"
    stale = _failover(state="SECOND", reason="in sync", heard_s_ago=3.0, last_state="SECOND")
    assert "SECOND (in sync), as heard 3.0 s ago; heartbeat lost" in describe_failover(stale)


PRIMARY_IN_SYNC = {
    "running": True,
    "directory": "/srv/data",
    "role": "primary",
    "node": "a",
    "replication": "in sync",
    "peer": "198.18.0.2:7788",
}


def test_a_primary_says_how_many_writes_wait_for_its_peer() -> None:
    stream = PRIMARY_IN_SYNC
    assert "waiting" not in describe_stream(stream | {"writes_waiting": 0})
    one, three = (describe_stream(stream | {"writes_waiting": n}) for n in (1, 3))
    assert one.endswith("; 1 write waiting for the peer")
    assert three.endswith("; 3 writes waiting for the peer")


def test_a_primary_at_the_fsync_sync_point_says_so() -> None:
    stream = PRIMARY_IN_SYNC
    assert "fsync" not in describe_stream(stream | {"sync": "write"})
    assert describe_stream(stream | {"sync": "fsync"}) == (
        "/srv/data: primary on a, in sync with 198.18.0.2:7788, writes wait for it only at fsync"
    )
