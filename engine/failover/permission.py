"""When a serving node lets its mounts acknowledge writes without the peer (issue 13, point 3).

A mount out of sync with its peer asks (`tandem.engine.replication.alone`); going on alone is
safe only when the peer cannot serve without this copy's changes:
- this node serves ALONE: the peer was declared lost while this node kept the witness (an
  isolated peer does not take over), it stopped serving and handed over, or the operator forced
  this copy;
- or the peer answered this very request: it dropped its stream sessions (nothing they still
  carry can make it up to date again) and saved that its copy is behind, before saying so.
  Only an answer to this request counts, never a "not up to date" heard earlier: that one may
  predate a resync's end the peer has handled since.

Anything else — the peer silent but not declared lost, the node stepping down — leaves the
writes waiting; the mount fails them with EIO after its timeout, or at once when fenced.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import trio

from tandem.engine.failover.module_state import SERVING, Module, State
from tandem.engine.failover.news import PeerNews
from tandem.engine.replication.alone import AloneRequests

LOOK_EVERY = 0.02  # how often waiting requests are judged (each look is a few comparisons)


def may_go_alone(state: State, token: str, peer: PeerNews | None) -> str | None:
    """Why the request ``token`` may be permitted now, or None (it waits)."""
    if state is State.ALONE:
        return "this node serves alone: the peer cannot serve without this copy's changes"
    if state is State.PRIM and peer is not None and token in peer.behind_for:
        return f"the peer ({peer.state.value}) says its copy is behind"
    return None


def behind_because(
    module: Module, news: PeerNews, peer: str, answered: Collection[str]
) -> tuple[str, tuple[str, ...]] | None:
    """The other side: what the serving peer's news makes of this copy. ``(why, requests)``
    when it is behind from now on — the peer asks to go on alone (``requests`` it has not
    answered yet: the runner drops the stream's sessions and saves the step before they are
    named in this node's news), or it serves ALONE, which acknowledges without this copy."""
    if news.state not in SERVING or module.state in SERVING:
        return None
    asked = tuple(token for token in news.asking if token not in answered)
    if asked:
        why = (
            f"{peer} goes on alone (its stream to this copy broke): this copy lacks its writes "
            "until the next resync"
        )
        return why, asked
    if news.state is State.ALONE and module.sure:
        return f"{peer} serves alone: this copy lacks its writes until the next resync", ()
    return None


async def grant_forever(
    requests: AloneRequests,
    state: Callable[[], State],
    peer: Callable[[], PeerNews | None],
) -> None:
    async with trio.open_nursery() as nursery:
        while True:
            await trio.sleep(LOOK_EVERY)
            for request in requests.waiting():
                why = may_go_alone(state(), request.token, peer())
                if why is not None:
                    requests.claim(request)
                    nursery.start_soon(requests.permit, request, why)
