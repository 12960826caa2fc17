"""``/metrics``: the state document turned into Prometheus families at each scrape (nothing is
kept between scrapes; the counters live in the processes that count, and read back through
their status). Pure: `families(report, journal_bytes)` is what the tests parse."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

STATES = ("STOP", "WAIT", "ALONE", "PRIM", "SECOND")


def families(
    node: str, report: dict[str, Any], journal_bytes: dict[tuple[str, int], int]
) -> list[Metric]:
    state = GaugeMetricFamily(
        "tandem_module_state", "1 for the module's state on this node", labels=["module", "state"]
    )
    serving = GaugeMetricFamily(
        "tandem_module_serving", "1 if this node serves the module", labels=["module", "node"]
    )
    in_state = GaugeMetricFamily(
        "tandem_module_state_seconds", "time in the current state", labels=["module"]
    )
    silent = GaugeMetricFamily(
        "tandem_heartbeat_silent_seconds",
        "time since the peer was last heard on each heartbeat network",
        labels=["module", "network"],
    )
    rejected = CounterMetricFamily(
        "tandem_heartbeat_rejected",
        "heartbeats refused, by reason (a flood or a wrong secret shows here)",
        labels=["module", "reason"],
    )
    checker_failures = CounterMetricFamily(
        "tandem_checker_failures", "failed application checks seen while serving", labels=["module"]
    )
    takeovers = CounterMetricFamily(
        "tandem_takeovers", "times this node began serving the module", labels=["module"]
    )
    takeover_seconds = GaugeMetricFamily(
        "tandem_last_takeover_seconds",
        "how long the last take-over's actions took (copy, VIP, start script)",
        labels=["module"],
    )
    in_sync = GaugeMetricFamily(
        "tandem_stream_in_sync",
        "1 if the stream is in sync with its peer",
        labels=["module", "stream"],
    )
    in_flight = GaugeMetricFamily(
        "tandem_stream_in_flight_mutations",
        "mutations sent, not acknowledged yet",
        labels=["module", "stream"],
    )
    in_flight_bytes = GaugeMetricFamily(
        "tandem_stream_in_flight_bytes",
        "bytes sent, not acknowledged yet",
        labels=["module", "stream"],
    )
    waiting = GaugeMetricFamily(
        "tandem_stream_writes_waiting",
        "application requests held until the peer acknowledges",
        labels=["module", "stream"],
    )
    latency = HistogramMetricFamily(
        "tandem_ack_latency_seconds",
        "time from sending a mutation to the peer's acknowledgement",
        labels=["module", "stream"],
    )
    resync_done = GaugeMetricFamily(
        "tandem_resync_bytes_done",
        "bytes the running resync has handled",
        labels=["module", "stream"],
    )
    resync_total = GaugeMetricFamily(
        "tandem_resync_bytes_total",
        "bytes the running resync will handle (0 while counting)",
        labels=["module", "stream"],
    )
    journal = GaugeMetricFamily(
        "tandem_journal_bytes", "size of the stream's change journal", labels=["module", "stream"]
    )
    for module, found in report["modules"].items():
        failover = found["failover"]
        if failover and failover.get("running"):
            for name in STATES:
                state.add_metric([module, name], 1.0 if failover["state"] == name else 0.0)
            serving.add_metric([module, node], 1.0 if failover.get("serving") else 0.0)
            in_state.add_metric([module], float(failover.get("for_s") or 0))
            heartbeat = failover.get("peer", {}).get("heartbeat", {})
            for network, seen in heartbeat.get("networks", {}).items():
                if seen.get("silent_for_s") is not None:
                    silent.add_metric([module, network], float(seen["silent_for_s"]))
            for reason, count in heartbeat.get("rejected", {}).items():
                rejected.add_metric([module, reason], float(count))
            checker_failures.add_metric([module], float(failover.get("checker_failures", 0)))
            taken = failover.get("takeovers", {})
            takeovers.add_metric([module], float(taken.get("total", 0)))
            if taken.get("last_s"):
                takeover_seconds.add_metric([module], float(taken["last_s"][-1]))
        for stream in found["streams"]:
            labels = [module, str(stream["index"])]
            if (module, stream["index"]) in journal_bytes:
                journal.add_metric(labels, float(journal_bytes[(module, stream["index"])]))
            if not stream.get("running"):
                continue
            in_sync.add_metric(labels, 1.0 if stream.get("replication") == "in sync" else 0.0)
            if stream.get("role") == "primary":
                in_flight.add_metric(labels, float(stream.get("in_flight", 0)))
                in_flight_bytes.add_metric(labels, float(stream.get("in_flight_bytes", 0)))
                waiting.add_metric(labels, float(stream.get("writes_waiting", 0)))
                seen = stream.get("ack_latency")
                if seen:
                    buckets = [
                        (repr(bound), float(count))
                        for bound, count in zip(seen["bounds"], seen["cumulative"], strict=True)
                    ]
                    buckets.append(("+Inf", float(seen["count"])))
                    latency.add_metric(labels, buckets, float(seen["sum"]))
            resync = stream.get("resync")
            if resync:
                resync_done.add_metric(labels, float(resync.get("bytes_done", 0)))
                resync_total.add_metric(labels, float(resync.get("bytes_total") or 0))
    return [
        state,
        serving,
        in_state,
        silent,
        rejected,
        checker_failures,
        takeovers,
        takeover_seconds,
        in_sync,
        in_flight,
        in_flight_bytes,
        waiting,
        latency,
        resync_done,
        resync_total,
        journal,
    ]


class _Scrape(Collector):
    def __init__(self, gather: Callable[[], list[Metric]]) -> None:
        self._gather = gather

    def collect(self) -> Iterator[Metric]:
        yield from self._gather()


def registry_of(gather: Callable[[], list[Metric]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scrape(gather))
    return registry
