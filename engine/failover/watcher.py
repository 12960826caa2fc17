"""Turns what the heartbeat and the received copy show into the state machine's events: the
peer's news (`PeerSeen`), its loss after asking the witness (`PeerLost`), an isolated primary's
self-fencing, the copy in sync (`InSync`) or behind (`Behind`)."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import replace

import trio

from tandem.engine.failover.module_log import ModuleLog
from tandem.engine.failover.module_state import (
    SERVING,
    Behind,
    InSync,
    Module,
    ModuleEvent,
    PeerLost,
    PeerSeen,
    State,
)
from tandem.engine.failover.news import MAX_TOKENS, PeerNews, decode_news
from tandem.engine.failover.permission import behind_because
from tandem.engine.failover.timing import Timing
from tandem.engine.failover.witness import WitnessWatch
from tandem.engine.replication.receiver import Receiver
from tandem.heartbeat.detector import Verdict
from tandem.heartbeat.service import HeartbeatService

log = logging.getLogger(__name__)

WATCH_EVERY = 0.05
# A peer heartbeat heard this long after the stream ended proves the primary outlived the
# stream (it may go on alone): longer than a heartbeat already in flight takes to arrive.
BEHIND_GRACE = 0.5


class PeerWatch:
    def __init__(
        self,
        name: str,
        peer: str,
        heartbeat: HeartbeatService,
        witness: WitnessWatch,
        heartbeat_timeout: float,
        heartbeat_interval: float,
        module_log: ModuleLog,
        *,
        module: Callable[[], Module],
        advertised: Callable[[], Module],
        receivers: Callable[[], list[Receiver]],
        send: Callable[[ModuleEvent], Awaitable[None]],
    ) -> None:
        self.name = name
        self.peer = peer
        self.heartbeat = heartbeat
        self.witness = witness
        self._timing = Timing(heartbeat_timeout, heartbeat_interval, WATCH_EVERY)
        self._log = module_log
        self._module = module
        self._advertised = advertised
        self._receivers = receivers
        self._send = send
        self.peer_news: PeerNews | None = None
        self.peer_news_at = 0.0  # time.monotonic() when the news arrived
        self.last_peer_news: PeerNews | None = None  # kept when the peer is lost: for operators
        self._peer_problem = ""
        self._answered: deque[str] = deque(maxlen=4 * MAX_TOKENS)  # requests already answered

    async def run(self) -> None:
        fed: tuple[PeerNews, State] | None = None
        lost_told = False
        fenced_at: float | None = None
        out_of_sync_since: float | None = None
        in_sync_told = False
        while True:
            await trio.sleep(WATCH_EVERY)
            verdict = self.heartbeat.current_verdict()
            if verdict is Verdict.LOST or self._isolated_while_serving():
                # a loop held up (a busy node) may not have read heartbeats already waiting in
                # the socket: let them in before believing the silence
                await trio.sleep(0.01)  # one pass of the I/O poll
                verdict = self.heartbeat.current_verdict()
            module = self._module()
            if not lost_told and self._isolated_while_serving():
                lost_told, fed = True, None
                fenced_at = self.heartbeat.last_heard
                self._log.note(
                    f"{self.peer} silent and the witness unreachable ({self.witness.detail}): "
                    "stepping down before the peer may take over"
                )
                await self._send(PeerLost(False))
            elif verdict in (Verdict.ALIVE, Verdict.DEGRADED):
                news = self._read_news()
                # after stepping down, only a heartbeat heard since counts as the peer's return
                if news is not None and self.heartbeat.last_heard != fenced_at:
                    lost_told = False
                    fenced_at = None
                    await self._answer_requests(news, module)
                    key = (replace(news, asking=(), behind_for=()), module.state)
                    if key != fed:
                        fed = key
                        seen = PeerSeen(news.state, news.epoch, news.served, news.sure, news.holds)
                        await self._send(seen)
            elif verdict is Verdict.LOST and not lost_told:
                lost_told, fed = True, None
                self.peer_news = None
                await self._send(PeerLost(await self._ask_witness()))
            module = self._module()
            receivers = self._receivers()
            receiving = module.state is State.SECOND and receivers
            in_sync = bool(receiving) and all(r.in_sync for r in receivers)
            if in_sync:
                out_of_sync_since = None
                if not in_sync_told:
                    in_sync_told = True
                    await self._send(InSync())
                continue
            in_sync_told = False
            if not receiving or not module.sure:
                out_of_sync_since = None
                continue
            now = trio.current_time()
            if out_of_sync_since is None:
                out_of_sync_since = now
            heard = self.heartbeat.last_heard
            news = self.peer_news
            if (
                heard is not None
                and heard > out_of_sync_since + BEHIND_GRACE
                and news is not None
                and news.state in SERVING
                # a peer that decides (D25) asks before it goes on alone: its requests (or its
                # serving ALONE) say it; only an older one may have gone on alone unasked
                and not news.decides
            ):
                why = (
                    f"the stream from {self.peer} ended while it lives on: it may acknowledge "
                    "writes this copy lacks; not up to date until the next resync"
                )
                await self._send(Behind(why))
                out_of_sync_since = None

    async def _answer_requests(self, news: PeerNews, module: Module) -> None:
        found = behind_because(module, news, self.peer, self._answered)
        if found is not None:
            why, asked = found
            self._answered.extend(asked)
            await self._send(Behind(why, answering=asked))

    def _read_news(self) -> PeerNews | None:
        payload = self.heartbeat.peer_payload
        try:
            news = decode_news(payload, self.name)
        except (ValueError, KeyError) as exc:
            problem = str(exc)
            if problem != self._peer_problem:
                self._peer_problem = problem
                self._log.note(f"the peer's heartbeat news is unusable: {problem}")
                log.error("module %s: %s", self.name, problem)
            return None
        self._peer_problem = ""
        self.peer_news, self.peer_news_at = news, time.monotonic()
        self.last_peer_news = news
        return news

    def _isolated_while_serving(self) -> bool:
        if not self.witness or self._advertised().state not in SERVING:
            return False
        return self._timing.must_fence(
            trio.current_time(), self.heartbeat.last_heard, self.witness.answered
        )

    async def _ask_witness(self) -> bool | None:
        if not self.witness:
            self._log.note(f"{self.peer} lost; no witness configured")
            return None
        # a probe sent now: the silence may have begun before the last heartbeat heard (one
        # lost just before a cut), so an answer to an earlier probe proves nothing (found by
        # the nemesis: a cut-off secondary took over on an answer from before its cut)
        reachable, detail = await self.witness.reachable_now()
        self._log.note(
            f"{self.peer} lost; witness {'reachable' if reachable else 'unreachable'}: {detail}"
        )
        return reachable
