"""Observability sink: infra and query-telemetry events as OpenTelemetry metrics, over OTLP/HTTP.

Delivery guarantee
    At least once, as aggregates. Each event is recorded into in-process instruments
    (gauges, counters, histograms; cumulative temporality) when it is routed; ``flush``
    exports the whole cumulative state (OTLP protobuf, ``POST <endpoint>/v1/metrics``)
    and is durable when the collector answered 2xx. A lost or repeated export is
    harmless: the next export carries every series' full cumulative value. After a crash,
    events replayed since the last commit are counted again into a new process whose
    series restart (a counter reset that backends handle); at most one checkpoint
    interval of events can be counted twice.
Idempotency key
    The series: resource (``service.name``) + metric name + attributes + start time.
Limits
    One export per flush (or per 10,000 events), one request at a time. A refused export
    (4xx) dead-letters the events recorded since the previous export (stage
    ``observability``); they are still in the aggregate.
Cardinality
    Attributes come from a closed set of keys (service, pool, severity, status,
    query_kind, percentile); each key keeps at most 64 distinct values, later ones
    become ``other``. Tenants, nodes, users, endpoints and ids are never attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource

from sinks.base import BatchingSink, BatchLimits, Envelope, RetryPolicy, SinkObserver
from sinks.http import in_thread, new_session, post

NAME = "observability"
MAX_VALUES_PER_KEY = 64
_SEVERITIES = frozenset({"critical", "error", "warning", "info"})
_HEALTH = frozenset({"healthy", "degraded", "unhealthy"})
_PERCENTILES = frozenset({"p50", "p75", "p90", "p95", "p99", "p999"})


class CardinalityGuard:
    """Caps the distinct values per attribute key; the rest become ``other``."""

    def __init__(self, limit: int = MAX_VALUES_PER_KEY) -> None:
        self.limit = limit
        self._seen: dict[str, set[str]] = {}

    def __call__(self, key: str, value: Any, closed: frozenset[str] | None = None) -> str:
        text = str(value).strip().lower() if value is not None else "unknown"
        if closed is not None:
            return text if text in closed else "other"
        seen = self._seen.setdefault(key, set())
        if text in seen:
            return text
        if len(seen) >= self.limit:
            return "other"
        seen.add(text)
        return text


def percentile_label(value: float) -> str:
    """99 or 0.99 → ``p99``; 99.9 → ``p999``."""
    pct = value * 100 if value <= 1 else value
    label = "p" + f"{pct:g}".replace(".", "")
    return label if label in _PERCENTILES else "other"


class ObservabilitySink(BatchingSink):
    """Records infra events as OTel metrics and exports them by OTLP/HTTP."""

    splittable = False  # a request carries aggregates, not the events

    def __init__(
        self,
        url: str,
        *,
        service_name: str = "sluice",
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
        limits: BatchLimits | None = None,
        policy: RetryPolicy | None = None,
        observer: SinkObserver | None = None,
    ) -> None:
        limits = limits or BatchLimits()
        limits = BatchLimits(10_000, max(limits.linger_s, 5.0), 1, limits.flush_deadline_s)
        super().__init__(NAME, limits, policy, observer)
        self.url, self.timeout_s = url, timeout_s
        self.headers = {"Content-Type": "application/x-protobuf", **(headers or {})}
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(
            metric_readers=[self.reader], resource=Resource.create({"service.name": service_name})
        )
        self.attr = CardinalityGuard()
        self._session = new_session()
        self._recorders = self._instruments()

    def _instruments(self) -> dict[str, Callable[[Mapping[str, Any]], bool]]:
        m = self.provider.get_meter("sluice.infra")
        pool_size = m.create_gauge("infra.pool.size", unit="{connection}", description="Pool size.")
        pool_in_use = m.create_gauge(
            "infra.pool.in_use", unit="{connection}", description="Connections in use."
        )
        pool_waiting = m.create_gauge(
            "infra.pool.queue_depth",
            unit="{request}",
            description="Requests waiting for a connection.",
        )
        pool_util = m.create_gauge("infra.pool.utilization", unit="1", description="In use / size.")
        errors = m.create_counter("infra.errors", unit="{error}", description="Errors reported.")
        requests_ = m.create_counter(
            "infra.requests", unit="{request}", description="Requests reported."
        )
        error_rate = m.create_gauge("infra.error_rate", unit="1", description="Errors / requests.")
        latency = m.create_histogram("infra.latency", unit="ms", description="Reported latencies.")
        latency_pct = m.create_gauge(
            "infra.latency.percentile", unit="ms", description="Reported latency percentiles."
        )
        health = m.create_gauge(
            "infra.health", unit="1", description="1 healthy, 0.5 degraded, 0 unhealthy."
        )
        checks = m.create_counter(
            "infra.health_checks", unit="{check}", description="Health checks by status."
        )
        scalings = m.create_counter(
            "infra.autoscaling.events", unit="{event}", description="Autoscaling events."
        )
        replicas = m.create_gauge(
            "infra.replicas", unit="{replica}", description="Replicas after scaling."
        )
        alerts = m.create_counter("infra.alerts", unit="{alert}", description="Alerts raised.")
        q_duration = m.create_histogram("query.duration", unit="ms", description="Query durations.")
        q_rows = m.create_histogram(
            "query.rows_scanned", unit="{row}", description="Rows scanned per query."
        )
        q_complexity = m.create_histogram(
            "query.complexity", unit="1", description="Query complexity scores."
        )
        a = self.attr

        def service(e: Mapping[str, Any]) -> dict[str, str]:
            return {"service": a("service", e.get("service"))}

        def pool(e: Mapping[str, Any]) -> bool:
            size, used, waiting = e.get("pool_size"), e.get("pool_in_use"), e.get("pool_waiting")
            attrs = {**service(e), "pool": a("pool", e.get("pool_name"))}
            for gauge, value in ((pool_size, size), (pool_in_use, used), (pool_waiting, waiting)):
                if value is not None:
                    gauge.set(value, attrs)
            if size and used is not None:
                pool_util.set(used / size, attrs)
            return size is not None or used is not None or waiting is not None

        def error_rate_(e: Mapping[str, Any]) -> bool:
            attrs = service(e)
            if e.get("error_count") is not None:
                errors.add(e["error_count"], attrs)
            if e.get("request_count") is not None:
                requests_.add(e["request_count"], attrs)
            rate = e.get("error_rate")
            if rate is None and e.get("error_count") is not None and e.get("request_count"):
                rate = e["error_count"] / e["request_count"]
            if rate is not None:
                error_rate.set(rate, attrs)
            return rate is not None or e.get("error_count") is not None

        def latency_(e: Mapping[str, Any]) -> bool:
            value = e.get("latency_ms")
            if value is None:
                return False
            if e.get("percentile") is not None:  # a pre-aggregated percentile, not a sample
                latency_pct.set(
                    value, {**service(e), "percentile": percentile_label(e["percentile"])}
                )
            else:
                latency.record(value, service(e))
            return True

        def health_(e: Mapping[str, Any]) -> bool:
            status = a("status", e.get("health_status"), _HEALTH)
            checks.add(1, {**service(e), "status": status})
            if status in _HEALTH:
                health.set({"healthy": 1.0, "degraded": 0.5, "unhealthy": 0.0}[status], service(e))
            return True

        def autoscaling(e: Mapping[str, Any]) -> bool:
            scalings.add(1, service(e))
            if e.get("scale_to") is not None:
                replicas.set(e["scale_to"], service(e))
            return True

        def alert(e: Mapping[str, Any]) -> bool:
            alerts.add(1, {**service(e), "severity": a("severity", e.get("severity"), _SEVERITIES)})
            return True

        def query(e: Mapping[str, Any]) -> bool:
            attrs = {"query_kind": a("query_kind", e.get("query_kind"))}
            recorded = False
            for hist, field in (
                (q_duration, "query_duration_ms"),
                (q_rows, "rows_scanned"),
                (q_complexity, "query_complexity_score"),
            ):
                if e.get(field) is not None:
                    hist.record(e[field], attrs)
                    recorded = True
            return recorded

        return {
            "infra_connection_pool_metrics": pool,
            "infra_error_rate": error_rate_,
            "infra_latency": latency_,
            "infra_health_check": health_,
            "infra_autoscaling": autoscaling,
            "infra_alert": alert,
            "query_executed": query,
        }

    def prepare(self, envelope: Envelope) -> bool | None:
        event = envelope.record
        recorder = self._recorders.get(event["event_type"])
        if recorder is None:
            self.observer.skipped(self.name, event["event_type"], "not_a_metric")
            return None
        if not recorder(event):
            self.observer.skipped(self.name, event["event_type"], "no_value")
            return None
        return True  # the batch item is only a count: the export carries the aggregate

    def export_body(self) -> bytes | None:
        """The current cumulative state as an OTLP ``ExportMetricsServiceRequest``."""
        data = self.reader.get_metrics_data()
        if data is None or not data.resource_metrics:
            return None
        return encode_metrics(data).SerializeToString()

    async def send(self, items: list[Any]) -> None:
        body = self.export_body()
        if body is not None:
            await in_thread(
                post, self._session, self.url, body, headers=self.headers, timeout=self.timeout_s
            )

    async def close(self) -> None:
        await super().close()
        self._session.close()
        self.provider.shutdown()
