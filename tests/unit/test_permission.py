"""Who may let a mount acknowledge writes without the peer (issue 13, point 3): a node serving
alone, or a primary whose peer answered this very request; never a primary on an older "not up
to date" (it may predate a resync's end the peer handled since), never a node stepping down."""

from __future__ import annotations

import pytest

from tandem.engine.failover.module_state import Module, State
from tandem.engine.failover.news import PeerNews
from tandem.engine.failover.permission import behind_because, may_go_alone
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


def _news(state: State, asking: tuple[str, ...] = ()) -> PeerNews:
    return PeerNews(state, 4, True, True, "", True, True, asking, (), True)


def test_a_copy_is_behind_once_it_answers_a_request_and_only_new_ones_count() -> None:
    second = Module(State.SECOND, "in sync", 4, False, True)
    found = behind_because(second, _news(State.PRIM, ("m.1", "m.2")), "a", answered=["m.1"])
    assert found is not None and found[1] == ("m.2",) and "goes on alone" in found[0]
    assert behind_because(second, _news(State.PRIM, ("m.1",)), "a", answered=["m.1"]) is None


def test_a_peer_serving_alone_makes_a_sure_copy_behind_and_nothing_else_does() -> None:
    sure = Module(State.SECOND, "in sync", 4, False, True)
    found = behind_because(sure, _news(State.ALONE), "a", answered=[])
    assert found is not None and found[1] == () and "serves alone" in found[0]
    assert behind_because(sure, _news(State.PRIM), "a", answered=[]) is None  # a broken stream
    not_sure = Module(State.SECOND, "resyncing", 4, False, False)
    assert behind_because(not_sure, _news(State.ALONE), "a", answered=[]) is None
    serving = Module(State.PRIM, "serving", 5, True, True)  # a split brain: not this rule's
    assert behind_because(serving, _news(State.ALONE, ("m.1",)), "a", answered=[]) is None
