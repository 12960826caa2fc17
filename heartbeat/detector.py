"""The failure detector, sans-IO: fed "heard the peer on network N at time T", it says whether
the peer is alive at time T'. The peer is lost only when *every* heartbeat network has been
silent for the timeout: one dead switch or cable is a degraded cluster, not a failover.

Time is a number of seconds from any monotonic clock the caller chooses (tests pass their own).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.Enum):
    ALIVE = "alive"  # heard on every network within the timeout
    DEGRADED = "degraded"  # heard on some networks only: say so, do not fail over
    LOST = "lost"  # silent on every network for the timeout
    UNKNOWN = "unknown"  # never heard since start (give it the timeout before calling it lost)


@dataclass(frozen=True)
class NetworkStatus:
    network: str
    silent_for: float | None  # seconds since last heard; None: never


class FailureDetector:
    def __init__(self, networks: list[str], timeout: float, started_at: float) -> None:
        if not networks:
            raise ValueError("a failure detector needs at least one network")
        if timeout <= 0:
            raise ValueError("the timeout must be positive")
        self.networks = list(dict.fromkeys(networks))
        self.timeout = timeout
        self._started_at = started_at
        self._heard: dict[str, float] = {}

    def heard(self, network: str, now: float) -> None:
        if network not in self.networks:
            raise ValueError(f"unknown heartbeat network {network!r}")
        self._heard[network] = max(now, self._heard.get(network, now))

    def verdict(self, now: float) -> Verdict:
        fresh = [n for n in self.networks if now - self._heard.get(n, -1e300) <= self.timeout]
        if len(fresh) == len(self.networks):
            return Verdict.ALIVE
        if fresh:
            return Verdict.DEGRADED
        if not self._heard and now - self._started_at <= self.timeout:
            return Verdict.UNKNOWN
        return Verdict.LOST

    def statuses(self, now: float) -> list[NetworkStatus]:
        return [
            NetworkStatus(n, None if n not in self._heard else round(now - self._heard[n], 3))
            for n in self.networks
        ]

    def lost_at(self) -> float:
        """When the peer is (or was) declared lost if nothing more is heard."""
        return max(self._heard.values(), default=self._started_at) + self.timeout
