"""How long the peer takes to acknowledge a mutation, as a cumulative histogram the metrics
export (``tandem_ack_latency_seconds``): counts per upper bound, their sum and total.
Kept in the stream's process, read through its status; fixed buckets, so no memory grows."""

from __future__ import annotations

from bisect import bisect_left

# from a loopback round trip to a peer timeout: where an operator needs to tell them apart
BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class LatencyHistogram:
    __slots__ = ("_counts", "count", "sum")

    def __init__(self) -> None:
        self._counts = [0] * (len(BOUNDS) + 1)  # the last: above every bound
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self._counts[bisect_left(BOUNDS, seconds)] += 1
        self.count += 1
        self.sum += seconds

    def as_dict(self) -> dict[str, object]:
        """Cumulative counts per bound (Prometheus' ``le``), the sum and the count."""
        cumulative, running = [], 0
        for count in self._counts[:-1]:
            running += count
            cumulative.append(running)
        return {
            "bounds": list(BOUNDS),
            "cumulative": cumulative,
            "sum": self.sum,
            "count": self.count,
        }
