"""The node's side of going on alone (`replicator`): which of its mount children wait for its
decision to acknowledge writes without the peer, and that decision carried to them.

Each mount child is followed over its control socket with a long poll (``asking``: answered when
its need changes), so the node learns within milliseconds that writes wait, without polling.
What the node decides is the failover layer's business (`tandem.engine.failover.permission`);
this module only keeps the requests and delivers the permits.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from tandem.engine.control.channel import ControlError, ask

log = logging.getLogger(__name__)

FOLLOW_WITHIN = 5.0  # the longest a long poll is held before it is answered anyway
RETRY_AFTER = 0.2  # a mount that did not answer is asked again after this


@dataclass(frozen=True)
class AloneRequest:
    control: str  # the mount child's control socket
    episode: int
    token: str  # names the request to the peer: "<mount>.<episode>"
    reason: str  # why the mount is out of sync


class AloneRequests:
    def __init__(self, changed: Callable[[], None] = lambda: None) -> None:
        self._pending: dict[str, AloneRequest] = {}
        self._sent: set[str] = set()  # tokens whose permit went out
        self._changed = changed

    def update(self, control: str, answer: dict[str, Any]) -> None:
        episode, token = answer.get("episode"), answer.get("request")
        if answer.get("asking") is True and isinstance(episode, int) and isinstance(token, str):
            request = AloneRequest(control, episode, token, str(answer.get("reason", "")))
            if self._pending.get(control) != request:
                self._pending[control] = request
                self._sent &= {r.token for r in self._pending.values()}  # bounded
                self._changed()
        else:
            self.withdraw(control)

    def withdraw(self, control: str) -> None:
        if self._pending.pop(control, None) is not None:
            self._changed()
        self._sent &= {request.token for request in self._pending.values()}

    def waiting(self) -> list[AloneRequest]:
        """The requests no permit has been sent for."""
        return [r for r in self._pending.values() if r.token not in self._sent]

    def tokens(self) -> list[str]:
        """What the peer is asked about (in this node's heartbeat news)."""
        return sorted(r.token for r in self._pending.values())

    def claim(self, request: AloneRequest) -> None:
        """A permit for ``request`` is on its way: not judged again unless it fails."""
        self._sent.add(request.token)

    async def permit(self, request: AloneRequest, why: str) -> None:
        try:
            answer = await trio.to_thread.run_sync(
                functools.partial(
                    ask, request.control, "permit", episode=request.episode, why=why, timeout=2.0
                ),
                abandon_on_cancel=True,
            )
        except ControlError as exc:
            self._sent.discard(request.token)  # asked again at the next look
            log.warning("could not permit %s to go on alone: %s", request.control, exc)
            return
        log.info("%s: %s", request.control, answer.get("message", "permitted"))


async def follow_asking(control: str, requests: AloneRequests) -> None:
    """Keep ``requests`` up to date with what one mount child asks, for as long as it runs."""
    known: dict[str, Any] = {}
    try:
        while True:
            try:
                known = await trio.to_thread.run_sync(
                    functools.partial(
                        ask,
                        control,
                        "asking",
                        timeout=FOLLOW_WITHIN + 3.0,
                        seen=known.get("changes"),
                        within=FOLLOW_WITHIN,
                    ),
                    abandon_on_cancel=True,
                )
            except ControlError:
                known = {}
                await trio.sleep(RETRY_AFTER)
                continue
            requests.update(control, known)
    finally:
        requests.withdraw(control)
