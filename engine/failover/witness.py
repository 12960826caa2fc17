"""The split-brain witness, asked all the time: when the peer falls silent, a serving node
already knows whether it still reaches the world, so fencing costs no probe (only answers to
probes sent after the silence began count: `timing`). Taking over asks once more at that
moment (`reachable_now`): a heartbeat lost just before a cut makes the silence seem to begin
earlier than it did, and an older answer would then prove nothing.
"""

from __future__ import annotations

import trio

from tandem.engine.config.modules import WITNESS_TIMEOUT
from tandem.heartbeat.probes import Witness, witness_reachable

# A router answers a LAN ping in milliseconds.
WITNESS_PROBE_TIMEOUT = 0.3
WITNESS_PROBE_EVERY = 0.2


class WitnessWatch:
    def __init__(self, witnesses: list[Witness], heartbeat_interval: float) -> None:
        self.witnesses = witnesses
        self._interval = heartbeat_interval
        self._answered: float | None = None  # send time of the latest answered probe
        self.detail = ""

    def __bool__(self) -> bool:
        return bool(self.witnesses)

    @property
    def answered(self) -> float | None:
        """The send time of the latest probe whose answer has arrived (None: never)."""
        return self._answered

    async def probe_forever(self) -> None:
        while True:
            sent = trio.current_time()
            reachable, detail = await witness_reachable(self.witnesses, WITNESS_PROBE_TIMEOUT)
            if reachable:
                self._answered = sent
            self.detail = detail
            await trio.sleep(WITNESS_PROBE_EVERY)

    async def reachable_now(self) -> tuple[bool, str]:
        """Whether the witness answers a probe sent now, asked patiently."""
        return await witness_reachable(self.witnesses, WITNESS_TIMEOUT)
