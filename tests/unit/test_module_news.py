"""What a node says of its module in its heartbeats, and what it makes of the peer's: a round
trip keeps every field; news of another module (the two nodes' configurations differ), of
another version, or malformed is refused with a reason, never half-believed."""

from __future__ import annotations

import pytest

from tandem.engine.failover.module_state import Module, State
from tandem.engine.failover.news import PeerNews, decode_news, encode_news
from tandem.heartbeat.packet import MAX_PAYLOAD


def test_a_round_trip_keeps_every_field_and_fits_one_datagram() -> None:
    module = Module(State.PRIM, "serving; b follows (in sync)" * 30, 7, True, True)
    payload = encode_news(module, "web", vip_held=True)
    assert len(payload) <= MAX_PAYLOAD
    news = decode_news(payload, "web")
    assert news == PeerNews(State.PRIM, 7, True, True, module.reason[:300], True, decides=True)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (encode_news(Module(), "db", False), "for module 'db', not 'web'"),
        (b'{"v": 2, "module": "web"}', "another version"),
        (b'{"v": 1, "module": "web", "state": "PRIM", "epoch": -1}', "bad epoch"),
        (b'{"v": 1, "module": "web", "state": "PRIM", "epoch": true}', "bad epoch"),
        (b'{"v": 1, "module": "web", "state": "BOSS", "epoch": 1}', "BOSS"),
        (b"not json", "Expecting value"),
        (b"", "Expecting value"),
    ],
)
def test_bad_news_is_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode_news(payload, "web")


def test_what_the_copy_holds_travels_and_a_peer_that_does_not_say_is_assumed_to_hold_data() -> None:
    module = Module(State.WAIT, "started", holds=True)
    assert decode_news(encode_news(module, "web", vip_held=False), "web").holds is True
    older = b'{"v": 1, "module": "web", "state": "WAIT", "epoch": 0}'
    assert decode_news(older, "web").holds is True  # unknown: never taken for an empty copy


def test_requests_to_go_on_alone_and_their_answers_travel_bounded() -> None:
    module = Module(State.PRIM, "serving", 3, True, True)
    asking = tuple(f"{i:08x}.{i}" for i in range(20))
    payload = encode_news(module, "web", False, asking=asking, behind_for=("ab12cd34.7",))
    assert len(payload) <= MAX_PAYLOAD
    news = decode_news(payload, "web")
    assert news.asking == asking[-16:]  # the newest: a module has a few directories
    assert news.behind_for == ("ab12cd34.7",)
    older = b'{"v": 1, "module": "web", "state": "PRIM", "epoch": 1}'
    assert decode_news(older, "web").asking == ()  # a peer that does not ask


@pytest.mark.parametrize(
    "field", ['"asking": "x"', '"asking": [1]', '"behind_for": [""]', f'"asking": {["t"] * 17}']
)
def test_bad_request_lists_are_refused(field: str) -> None:
    payload = ('{"v": 1, "module": "web", "state": "PRIM", "epoch": 1, ' + field + "}").replace(
        "'", '"'
    )
    with pytest.raises(ValueError, match="request"):
        decode_news(payload.encode(), "web")
