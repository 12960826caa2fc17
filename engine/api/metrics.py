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


MODULE, STREAM = ["module"], ["module", "stream"]
# name: (kind, help, labels) — every family a scrape answers, in this order
FAMILIES: dict[str, tuple[Callable[..., Metric], str, list[str]]] = {
    "tandem_module_state": (
        GaugeMetricFamily,
        "1 for the module's state on this node",
        [*MODULE, "state"],
    ),
    "tandem_module_serving": (
        GaugeMetricFamily,
        "1 if this node serves the module",
        [*MODULE, "node"],
    ),
    "tandem_module_state_seconds": (GaugeMetricFamily, "time in the current state", MODULE),
    "tandem_heartbeat_silent_seconds": (
        GaugeMetricFamily,
        "time since the peer was last heard on each heartbeat network",
        [*MODULE, "network"],
    ),
    "tandem_heartbeat_rejected": (
        CounterMetricFamily,
        "heartbeats refused, by reason (a flood or a wrong secret shows here)",
        [*MODULE, "reason"],
    ),
    "tandem_checker_failures": (
        CounterMetricFamily,
        "failed application checks seen while serving",
        MODULE,
    ),
    "tandem_takeovers": (CounterMetricFamily, "times this node began serving the module", MODULE),
    "tandem_last_takeover_seconds": (
        GaugeMetricFamily,
        "how long the last take-over's actions took (copy, VIP, start script)",
        MODULE,
    ),
    "tandem_stream_in_sync": (
        GaugeMetricFamily,
        "1 if the stream is in sync with its peer",
        STREAM,
    ),
    "tandem_stream_in_flight_mutations": (
        GaugeMetricFamily,
        "mutations sent, not acknowledged yet",
        STREAM,
    ),
    "tandem_stream_in_flight_bytes": (
        GaugeMetricFamily,
        "bytes sent, not acknowledged yet",
        STREAM,
    ),
    "tandem_stream_writes_waiting": (
        GaugeMetricFamily,
        "application requests held until the peer acknowledges",
        STREAM,
    ),
    "tandem_ack_latency_seconds": (
        HistogramMetricFamily,
        "time from sending a mutation to the peer's acknowledgement",
        STREAM,
    ),
    "tandem_resync_bytes_done": (GaugeMetricFamily, "bytes the running resync has handled", STREAM),
    "tandem_resync_bytes_total": (
        GaugeMetricFamily,
        "bytes the running resync will handle (0 while counting)",
        STREAM,
    ),
    "tandem_journal_bytes": (GaugeMetricFamily, "size of the stream's change journal", STREAM),
}


def families(
    node: str, report: dict[str, Any], journal_bytes: dict[tuple[str, int], int]
) -> list[Metric]:
    made: dict[str, Any] = {
        name: kind(name, text, labels=labels) for name, (kind, text, labels) in FAMILIES.items()
    }
    state, serving, in_state = (
        made[f"tandem_module_{n}"] for n in ("state", "serving", "state_seconds")
    )
    silent, rejected = made["tandem_heartbeat_silent_seconds"], made["tandem_heartbeat_rejected"]
    checker_failures, takeovers = made["tandem_checker_failures"], made["tandem_takeovers"]
    takeover_seconds, latency = (
        made["tandem_last_takeover_seconds"],
        made["tandem_ack_latency_seconds"],
    )
    in_sync, waiting = made["tandem_stream_in_sync"], made["tandem_stream_writes_waiting"]
    in_flight = made["tandem_stream_in_flight_mutations"]
    in_flight_bytes = made["tandem_stream_in_flight_bytes"]
    resync_done, resync_total = made["tandem_resync_bytes_done"], made["tandem_resync_bytes_total"]
    journal = made["tandem_journal_bytes"]
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
    return list(made.values())


class _Scrape(Collector):
    def __init__(self, gather: Callable[[], list[Metric]]) -> None:
        self._gather = gather

    def collect(self) -> Iterator[Metric]:
        yield from self._gather()


def registry_of(gather: Callable[[], list[Metric]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scrape(gather))
    return registry
