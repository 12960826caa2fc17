"""What a node says of a module in each heartbeat (the payload `tandem.heartbeat` carries
without reading it): its state, its serving period (epoch), whether that copy served and is sure
to be the newest, why, and whether it holds the VIP. JSON, versioned; anything else is refused
with a worded reason."""

from __future__ import annotations

import json
from dataclasses import dataclass

from tandem.engine.failover.module_state import Module, State

PAYLOAD_VERSION = 1


@dataclass(frozen=True)
class PeerNews:
    state: State
    epoch: int
    served: bool
    sure: bool
    reason: str
    vip: bool
    holds: bool = False  # its copy holds data (decoded as True from a peer that does not say)
    asking: tuple[str, ...] = ()  # serving: its mounts' requests to go on alone
    behind_for: tuple[str, ...] = ()  # the peer's requests this node answered (it is behind)
    decides: bool = False  # its mounts go on alone only when permitted (D25)


MAX_TOKENS = 16  # requests named in one heartbeat (a module has a few directories)
MAX_TOKEN = 64


def encode_news(
    module: Module,
    name: str,
    vip_held: bool,
    asking: tuple[str, ...] = (),
    behind_for: tuple[str, ...] = (),
) -> bytes:
    return json.dumps(
        {
            "v": PAYLOAD_VERSION,
            "module": name,
            "state": module.state.value,
            "epoch": module.epoch,
            "served": module.served,
            "sure": module.sure,
            "reason": module.reason[:300],
            "vip": vip_held,
            "holds": module.holds,
            "asking": list(asking[-MAX_TOKENS:]),
            "behind_for": list(behind_for[-MAX_TOKENS:]),
            "decides": True,
        },
        separators=(",", ":"),
    ).encode()


def decode_news(payload: bytes, name: str) -> PeerNews:
    """Raises ValueError (worded) for anything but this module's news."""
    raw = json.loads(payload)
    if not isinstance(raw, dict) or raw.get("v") != PAYLOAD_VERSION:
        raise ValueError(f"heartbeat news of another version ({str(raw)[:60]})")
    if raw.get("module") != name:
        raise ValueError(
            f"the peer's heartbeats on this port are for module {raw.get('module')!r}, "
            f"not {name!r}: the two nodes' configurations differ"
        )
    epoch = raw.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise ValueError(f"bad epoch in the peer's news: {epoch!r}")
    return PeerNews(
        State(raw.get("state")),
        epoch,
        raw.get("served") is True,
        raw.get("sure") is True,
        str(raw.get("reason", "")),
        raw.get("vip") is True,
        raw.get("holds") is not False,
        _tokens(raw.get("asking", [])),
        _tokens(raw.get("behind_for", [])),
        raw.get("decides") is True,
    )


def _tokens(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_TOKENS:
        raise ValueError(f"bad request list in the peer's news: {str(raw)[:60]}")
    if not all(isinstance(token, str) and 0 < len(token) <= MAX_TOKEN for token in raw):
        raise ValueError(f"bad request name in the peer's news: {str(raw)[:60]}")
    return tuple(raw)
