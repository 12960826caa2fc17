"""Which resync a new connection starts with: tracked (only what the two journals name) when
both journals are complete and share a generation, else a full comparison, and why."""

from __future__ import annotations

import logging
import os

import trio

from tandem.engine.protocol.connection import PeerState
from tandem.engine.reintegration.journal import ChangeJournal
from tandem.engine.reintegration.plan import Plan, compare_paths, full_plan, plan_from_history

log = logging.getLogger(__name__)


async def choose_plan(
    journal: ChangeJournal | None, full_requested: str, peer: PeerState, token: int | None
) -> tuple[Plan, str]:
    """The plan, and how it compares (for the log, `tandem state` and tests). ``token`` is the
    sync point this connection wrote: the history read stops there (what follows is mirrored
    by the stream itself)."""
    if full_requested:
        return full_plan(), f"full comparison ({full_requested})"
    if journal is None:
        return full_plan(), "full comparison (no journal on this node)"
    history = await trio.to_thread.run_sync(journal.read_history, token)
    if not history.complete:
        return full_plan(), f"full comparison ({history.why_incomplete})"
    if not peer.complete:
        return full_plan(), "full comparison (the peer's own changes are unknown)"
    if not history.generation or history.generation != peer.generation:
        return full_plan(), "full comparison (the copies share no known state)"
    plan = plan_from_history(history)
    if peer.paths:
        if peer.served_alone:  # split brain: the failover layer keeps this from happening
            log.warning(
                "the peer served alone since the copies last agreed: its changes to %d "
                "path(s) are replaced by this node's (%s)",
                len(peer.paths),
                ", ".join(os.fsdecode(p) for p in peer.paths[:5]),
            )
        compare_paths(plan, peer.paths)
    return plan, f"tracked: {len(plan.work)} path(s), {len(plan.moves)} move(s)"
