"""Sluice's own health, as Prometheus metrics on the worker's ``/metrics`` endpoint.

Every label has a small, fixed set of values: sink names, event families and types of
the taxonomy, stable reason codes, topic names and partition numbers. No tenant, user,
email or event id ever becomes a label value.
"""

from __future__ import annotations

import time
from collections.abc import Container

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from topics.taxonomy import FAMILY_OF

__all__ = ["CONTENT_TYPE_LATEST", "HealthMetrics"]

_FLUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_RESTORE_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


def _bounded(value: str, allowed: Container[str]) -> str:
    return value if value in allowed else "other"


class HealthMetrics:
    """The worker's metrics, in a registry of their own (one per worker)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # epoch seconds, per sink, for `sluice status` (not metrics: timestamps as gauges
        # would need a label per sink anyway and Prometheus has the counters' rates)
        self.last_flush: dict[str, float] = {}
        self.last_delivery: dict[str, float] = {}
        # per sink, for `sluice status`: data points a destination refused inside a 2xx
        # (OTLP partial success), how many replies said so, the last message and when
        self.partial_success: dict[str, dict[str, int | float | str]] = {}
        r = self.registry
        self.consumed = Counter(
            "sluice_events_consumed", "Events taken from Kafka, per family.", ["family"], registry=r
        )
        self.routed = Counter(
            "sluice_events_routed", "Events handed to a sink, per sink.", ["sink"], registry=r
        )
        self.delivered = Counter(
            "sluice_sink_delivered_events",
            "Events a sink's destination accepted.",
            ["sink"],
            registry=r,
        )
        self.skipped = Counter(
            "sluice_sink_skipped_events",
            "Events a sink did not send on purpose (sampled_out, no_allowlist).",
            ["sink", "event_type", "why"],
            registry=r,
        )
        self.dead_letters = Counter(
            "sluice_dead_letters",
            "Events sent to the dead-letter topic, per stage (decode or a sink) and reason.",
            ["stage", "reason"],
            registry=r,
        )
        self.forwarded = Counter(
            "sluice_events_forwarded",
            "Events read at a partition other than their key's (an older key, a replayed "
            "dead letter), produced again to it instead of applied, per family.",
            ["family"],
            registry=r,
        )
        self.late = Counter(
            "sluice_late_events",
            "Email events outside the attribution window (not counted in rollups), per type.",
            ["event_type"],
            registry=r,
        )
        self.retries = Counter(
            "sluice_sink_retries",
            "Sink requests retried, per reason.",
            ["sink", "reason"],
            registry=r,
        )
        self.flush_seconds = Histogram(
            "sluice_sink_flush_seconds",
            "Time of one sink flush.",
            ["sink"],
            buckets=_FLUSH_BUCKETS,
            registry=r,
        )
        self.rejected_points = Counter(
            "sluice_sink_rejected_points",
            "Data points a destination refused in a reply that accepted the request "
            "(OTLP partial success).",
            ["sink"],
            registry=r,
        )
        self.checkpoint_seconds = Histogram(
            "sluice_checkpoint_seconds",
            "Time of one checkpoint.",
            buckets=_FLUSH_BUCKETS,
            registry=r,
        )
        self.checkpoint_step_seconds = Histogram(
            "sluice_checkpoint_step_seconds",
            "Time of one step of a checkpoint (streams/checkpoint.py: snapshot, sinks, "
            "changelog, dead_letters, olap, erasures, store, commit, leftover).",
            ["step"],
            buckets=_FLUSH_BUCKETS,
            registry=r,
        )
        self.checkpoint_failures = Counter(
            "sluice_checkpoint_failures",
            "Checkpoints that failed (nothing acked; retried).",
            registry=r,
        )
        self.refused = Gauge(
            "sluice_sink_refused",
            "1 while a sink's destination refuses Sluice for good (401/403/407 past "
            "SINK_REFUSED_AFTER_S); its route is paused or dead-lettered (SINK_ON_REFUSED).",
            ["sink"],
            registry=r,
        )
        self.refused_requests = Counter(
            "sluice_sink_refused_requests",
            "Sink requests the destination refused (401/403/407), per reason.",
            ["sink", "reason"],
            registry=r,
        )
        self.buffered = Gauge(
            "sluice_sink_buffered_events",
            "Events buffered in a sink, not yet durable.",
            ["sink"],
            registry=r,
        )
        self.pending = Gauge(
            "sluice_pending_events", "Events taken and not yet acknowledged.", registry=r
        )
        self.lag = Gauge(
            "sluice_consumer_lag",
            "Events not yet committed, per source topic and partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.restores = Counter(
            "sluice_state_restores",
            "Partitions whose state came back before their events were read, per mode "
            "(kept, reused: the local store; rebuilt: from the whole changelog) and, for a "
            "rebuild, why (streams/store.py REASONS).",
            ["mode", "reason"],
            registry=r,
        )
        self.restore_seconds = Histogram(
            "sluice_state_restore_seconds",
            "Time from a partition's assignment to its state restored, per mode.",
            ["mode"],
            buckets=_RESTORE_BUCKETS,
            registry=r,
        )
        self.restore_entries = Counter(
            "sluice_state_restore_entries",
            "Changelog entries joined into restored state, per mode.",
            ["mode"],
            registry=r,
        )
        self.restoring = Gauge(
            "sluice_state_restoring",
            "Partitions assigned whose state is being restored (their events wait).",
            registry=r,
        )

        # erasure (docs/erasure.md): no tenant or lead ever becomes a label value
        self.erasures = Counter(
            "sluice_erasures_applied",
            "Leads newly erased in this worker's state, as the erasure registry named them.",
            registry=r,
        )
        self.erasure_purged_rows = Counter(
            "sluice_erasure_purged_rows",
            "OLAP rows of erased leads deleted (ALTER TABLE ... DELETE).",
            registry=r,
        )
        self.erasure_purge_failures = Counter(
            "sluice_erasure_purge_failures",
            "OLAP purges of erased leads that failed (retried; a missing ALTER DELETE grant?).",
            registry=r,
        )
        self.erasure_deletions = Counter(
            "sluice_erasure_deletion_requests",
            "Deletion requests for erased leads, per destination and outcome status.",
            ["destination", "status"],
            registry=r,
        )

    def observer(self) -> SinkObserverAdapter:
        """These metrics as the observer the sinks report to."""
        return SinkObserverAdapter(self)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def dead_letter_counts(self) -> dict[str, dict[str, int]]:
        """Dead letters produced by this worker: {stage: {reason: count}}."""
        counts: dict[str, dict[str, int]] = {}
        for metric in self.dead_letters.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    stage, reason = sample.labels["stage"], sample.labels["reason"]
                    counts.setdefault(stage, {})[reason] = int(sample.value)
        return counts


class SinkObserverAdapter:
    """:class:`HealthMetrics` seen as a sinks' observer (names kept apart from the metrics)."""

    def __init__(self, health: HealthMetrics) -> None:
        self.health = health

    def delivered(self, sink: str, count: int) -> None:
        self.health.delivered.labels(sink).inc(count)
        self.health.last_delivery[sink] = time.time()

    def retried(self, sink: str, reason: str) -> None:
        self.health.retries.labels(sink, reason).inc()

    def rejected(self, sink: str, reason: str, count: int) -> None:
        pass  # counted once, when the worker produces the dead letter (dead_letters)

    def skipped(self, sink: str, event_type: str, why: str) -> None:
        self.health.skipped.labels(sink, _bounded(event_type, FAMILY_OF), why).inc()

    def flushed(self, sink: str, seconds: float) -> None:
        self.health.flush_seconds.labels(sink).observe(seconds)
        self.health.last_flush[sink] = time.time()

    def refused(self, sink: str, reason: str) -> None:
        self.health.refused_requests.labels(sink, reason).inc()

    def state(self, sink: str, state: str) -> None:
        self.health.refused.labels(sink).set(1 if state == "refused" else 0)

    def partial(self, sink: str, rejected: int, message: str) -> None:
        self.health.rejected_points.labels(sink).inc(rejected)
        entry = self.health.partial_success.setdefault(
            sink, {"rejected_points": 0, "replies": 0, "last_message": "", "last_at": 0.0}
        )
        entry["rejected_points"] = int(entry["rejected_points"]) + rejected
        entry["replies"] = int(entry["replies"]) + 1
        entry["last_message"] = message[:500]
        entry["last_at"] = time.time()
