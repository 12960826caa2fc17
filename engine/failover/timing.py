"""When a silent peer makes a serving node fence itself, and when it lets a secondary take
over: pure, clock-fed (like `heartbeat.detector`), so a property test can sweep every phase of
heartbeats, witness probes and the runner's watch loop.

Only witness answers to probes *sent after* the silence began (the peer's last heartbeat plus
one interval: it may have been cut off just before sending its next) tell which side of a
partition a node is on. The serving node fences once the peer has been silent for
``SELF_FENCE_AT`` of the timeout (less for short timeouts: `Timing.fence_after`) unless such
an answer has *arrived*: a probe still in flight counts as no answer, so the fence never waits
on a probe cycle. The other node may take over
only after the full timeout and only with such an answer. The gap between the two is the margin
the runner's loop and the step down have.
"""

from __future__ import annotations

from dataclasses import dataclass

# A serving node that hears neither the peer nor the witness steps down at this fraction of the
# heartbeat timeout: before the peer (which reaches the witness) takes over at the full timeout.
SELF_FENCE_AT = 0.6
# With a short timeout that is not enough: the fence is seen one watch tick and a re-read late,
# and the peer may have heard this node up to one heartbeat interval earlier than this node
# heard it, so the peer's full timeout can end first (a property found it: timeout 0.25 s,
# interval 0.066 s, the fence 4 ms after the peer could serve). The fence then comes earlier
# still, by all of that and this much to spare.
FENCE_MARGIN = 0.02


@dataclass(frozen=True)
class Timing:
    timeout: float  # the heartbeat timeout: silence on every network before the peer is lost
    interval: float  # the heartbeat interval
    tick: float  # how often the runner's watch loop looks (its WATCH_EVERY)

    @property
    def fence_after(self) -> float:
        """The silence after which a serving node without a witness answer steps down."""
        bound = self.timeout - self.interval - self.tick - FENCE_MARGIN
        return min(SELF_FENCE_AT * self.timeout, bound)

    def silence_began(self, last_heard: float | None) -> float:
        """From when on a witness answer says something about this silence."""
        return (last_heard if last_heard is not None else -1e9) + self.interval

    def must_fence(self, now: float, last_heard: float | None, answered: float | None) -> bool:
        """A serving node: step down now? ``answered``: the send time of the latest witness
        probe whose answer has arrived (None: never)."""
        if last_heard is None or now - last_heard < self.fence_after:
            return False
        return answered is None or answered < self.silence_began(last_heard)

    def may_take_over(self, now: float, last_heard: float | None, answered: float | None) -> bool:
        """The earliest a secondary may serve in place of a silent peer (the bound the fence
        must beat). The runner is stricter still: it takes over only on an answer to a probe
        it sends at that moment (a heartbeat lost before a cut makes ``last_heard`` early)."""
        if last_heard is not None and now - last_heard <= self.timeout:
            return False
        return answered is not None and answered >= self.silence_began(last_heard)
