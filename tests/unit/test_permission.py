"""Who may let a mount acknowledge writes without the peer (issue 13, point 3): a node serving
alone, or a primary whose peer answered this very request; never a primary on an older "not up
to date" (it may predate a resync's end the peer handled since), never a node stepping down."""

from __future__ import annotations

import pytest

from tandem.engine.failover.module_state import State
from tandem.engine.failover.news import PeerNews
from tandem.engine.failover.permission import may_go_alone
from tandem.engine.replication.alone import AloneRequests


def _peer(sure: bool, behind_for: tuple[str, ...] = ()) -> PeerNews:
    return PeerNews(State.SECOND, 3, False, sure, "", False, True, (), behind_for)


def test_serving_alone_permits_whatever_the_peer_last_said() -> None:
    assert may_go_alone(State.ALONE, "m.1", None) is not None
    assert may_go_alone(State.ALONE, "m.1", _peer(sure=True)) is not None


def test_a_primary_waits_for_the_answer_to_this_request() -> None:
    assert may_go_alone(State.PRIM, "m.2", _peer(sure=False)) is None  # heard, not answered
    assert may_go_alone(State.PRIM, "m.2", _peer(sure=False, behind_for=("m.1",))) is None
    assert may_go_alone(State.PRIM, "m.2", None) is None  # silent, not declared lost yet
    why = may_go_alone(State.PRIM, "m.2", _peer(sure=False, behind_for=("m.1", "m.2")))
    assert why is not None and "behind" in why


@pytest.mark.parametrize("state", [State.WAIT, State.SECOND, State.STOP])
def test_a_node_that_does_not_serve_permits_nothing(state: State) -> None:
    assert may_go_alone(state, "m.1", _peer(sure=False, behind_for=("m.1",))) is None


def test_requests_are_kept_per_mount_and_judged_once_until_they_change() -> None:
    changes: list[int] = []
    requests = AloneRequests(changed=lambda: changes.append(1))
    requests.update("a.sock", {"asking": True, "episode": 3, "request": "m.3", "reason": "x"})
    requests.update("a.sock", {"asking": True, "episode": 3, "request": "m.3", "reason": "x"})
    assert requests.tokens() == ["m.3"] and len(changes) == 1  # told once
    (waiting,) = requests.waiting()
    requests.claim(waiting)
    assert requests.waiting() == [] and requests.tokens() == ["m.3"]  # still asked of the peer
    requests.update("a.sock", {"asking": True, "episode": 4, "request": "m.4", "reason": "x"})
    assert [r.token for r in requests.waiting()] == ["m.4"]  # a new episode asks afresh
    requests.update("a.sock", {"asking": False, "episode": 4, "request": "m.4"})
    assert requests.tokens() == [] and requests.waiting() == []
    requests.update("b.sock", {"asking": True, "episode": "?", "request": "m.1"})  # malformed
    assert requests.tokens() == []
