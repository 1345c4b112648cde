"""Observability sink: infra and query-telemetry events as OpenTelemetry metrics, over OTLP/HTTP.

Delivery guarantee
    At least once, as aggregates. Each event is recorded into in-process instruments
    (cumulative temporality) when it is routed; ``flush`` exports the whole cumulative
    state (OTLP protobuf, ``POST <endpoint>/v1/metrics``) and is durable when the
    collector answered 2xx with an ``ExportMetricsServiceResponse`` that kept at least
    part of it (what it rejected is counted: see Partial success).
    A lost or repeated export is harmless: the next export carries every series' full
    cumulative value. After a crash, events replayed since the last commit are counted
    again into a new process whose series restart (a counter reset that backends handle);
    at most one checkpoint interval of events can be counted twice.
Idempotency key
    The series: resource (``service.name`` + ``service.instance.id``) + metric name +
    attributes + start time.
Limits
    One export per flush (or per 10,000 events), one request at a time. A refused export
    (4xx, or a reply that rejects every data point) dead-letters the events recorded since
    the previous export (stage ``observability``); they are still in the aggregate.
Partial success
    OTLP/HTTP answers 200 with ``partial_success.rejected_data_points`` and an
    ``error_message`` when a backend kept only part of an export. Those points are counted
    (``sluice_sink_rejected_points_total``), logged once per export and shown in
    ``/sluice/status/`` (``sinks.partial_success``). The export is not retried: the OTLP
    specification forbids retrying a partial success, and the next export carries the
    same cumulative values anyway. A reply that is not an ``ExportMetricsServiceResponse``
    (or is over 4 MiB) is recorded the same way, with 0 points.
Conventions
    OpenTelemetry semantic conventions **v1.44.0** (``SCHEMA_URL`` on the resource and the
    scope) wherever one exists: ``db.client.operation.duration`` (Stable) and
    ``db.client.connection.{count,max,pending_requests}`` (Development, i.e. experimental:
    a later version may rename them; Sluice follows with a migration note). Everything
    else is Sluice's own, under ``sluice.``; every attribute key is either a convention's
    or ``sluice.*``; durations are seconds. :data:`METRICS` is the one list.
Resource
    The exporting worker: ``service.name`` (``OTEL_SERVICE_NAME``), a random
    ``service.instance.id`` per process, ``service.version``. OTLP wants one writer per
    series; two workers (or one restarted) each keep their own cumulative state, so each
    is its own instance. The service a measurement is *about* is the attribute
    ``sluice.service.name`` (the event's ``service``).
Histograms
    Explicit boundaries chosen per quantity (:data:`METRICS`, with the reason), never the
    SDK's default 0…10,000.
Cardinality
    Attribute keys are a closed set; each keeps at most 64 distinct values, later ones
    become ``other``. Tenants, nodes, users, endpoints and ids are never attributes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.version import __version__ as OTEL_SDK_VERSION

from sinks.base import (
    BatchingSink,
    BatchLimits,
    Envelope,
    PermanentError,
    RetryPolicy,
    SinkObserver,
)
from sinks.http import in_thread, new_session, post
from sluice import __version__ as SLUICE_VERSION

log = logging.getLogger("sluice.sinks")

NAME = "observability"
SEMCONV_VERSION = "1.44.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
MAX_VALUES_PER_KEY = 64
MAX_REPLY_BYTES = 4 * 1024 * 1024  # the OTLP specification's recommended limit
# `query_executed` names no database system; `db.system.name` is required on
# db.client.operation.duration, and `other_sql` is the conventions' fallback value.
# XXX: a `db_system` field in a later infra schema version would replace it.
DB_SYSTEM = "other_sql"

# -- attribute keys (the closed set) ----------------------------------------------------------
SERVICE = "sluice.service.name"
POOL = "db.client.connection.pool.name"
STATE = "db.client.connection.state"
DB_SYSTEM_NAME = "db.system.name"
QUERY_KIND = "sluice.query.kind"
HEALTH_STATUS = "sluice.health.status"
ALERT_SEVERITY = "sluice.alert.severity"
PERCENTILE = "sluice.latency.percentile"
ATTRIBUTE_KEYS = frozenset(
    {SERVICE, POOL, STATE, DB_SYSTEM_NAME, QUERY_KIND, HEALTH_STATUS, ALERT_SEVERITY, PERCENTILE}
)

_SEVERITIES = frozenset({"critical", "error", "warning", "info"})
_HEALTH = frozenset({"healthy", "degraded", "unhealthy"})
_PERCENTILES = frozenset({"p50", "p75", "p90", "p95", "p99", "p999"})


def _one_two_five(lowest: float, highest: float) -> tuple[float, ...]:
    """1, 2, 5 × each power of ten from ``lowest`` to ``highest`` (both powers of ten)."""
    bounds: list[float] = []
    decade = lowest
    while decade < highest * 0.999:
        bounds += [round(decade * m, 12) for m in (1, 2, 5)]
        decade *= 10
    return (*bounds, highest)


@dataclass(frozen=True)
class MetricSpec:
    """One metric Sluice exports: what it is, where its name comes from, how it buckets."""

    instrument: str  # counter | updowncounter (asynchronous) | gauge | histogram
    unit: str
    description: str
    attributes: tuple[str, ...]
    convention: str  # "semconv stable" | "semconv development" | "sluice"
    buckets: tuple[float, ...] = ()
    buckets_why: str = ""


_S = (SERVICE,)
METRICS: Mapping[str, MetricSpec] = MappingProxyType(
    {
        # infra_connection_pool_metrics. `idle` is not reported: the event carries the
        # configured maximum, not the connections the pool has open, so size - in_use
        # would count connections that may not exist.
        "db.client.connection.count": MetricSpec(
            "updowncounter",
            "{connection}",
            "Connections in the state of db.client.connection.state (only `used` is known).",
            (SERVICE, POOL, STATE),
            "semconv development",
        ),
        "db.client.connection.max": MetricSpec(
            "updowncounter",
            "{connection}",
            "The maximum number of open connections allowed (the pool's configured size).",
            (SERVICE, POOL),
            "semconv development",
        ),
        "db.client.connection.pending_requests": MetricSpec(
            "updowncounter",
            "{request}",
            "Requests waiting for an open connection.",
            (SERVICE, POOL),
            "semconv development",
        ),
        # infra_error_rate
        "sluice.infra.errors": MetricSpec("counter", "{error}", "Errors reported.", _S, "sluice"),
        "sluice.infra.requests": MetricSpec(
            "counter", "{request}", "Requests reported.", _S, "sluice"
        ),
        "sluice.infra.error_rate": MetricSpec(
            "gauge", "1", "Errors / requests in the last reported window.", _S, "sluice"
        ),
        # infra_latency
        "sluice.infra.latency": MetricSpec(
            "histogram",
            "s",
            "Latencies reported one sample at a time (routes, RPC methods, jobs).",
            _S,
            "sluice",
            (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
            + (30, 60, 300),
            "Request latencies: http.server.request.duration's advisory boundaries (5 ms to "
            "10 s, finest where interactive requests live), plus 30 s, 1 min and 5 min because "
            "the event also reports jobs.",
        ),
        "sluice.infra.latency_percentile": MetricSpec(
            "gauge",
            "s",
            "Latency percentiles reported pre-aggregated by the service.",
            (SERVICE, PERCENTILE),
            "sluice",
        ),
        # infra_health_check
        "sluice.infra.health": MetricSpec(
            "gauge", "1", "Last health check: 1 healthy, 0.5 degraded, 0 unhealthy.", _S, "sluice"
        ),
        "sluice.infra.health_checks": MetricSpec(
            "counter", "{check}", "Health checks by status.", (SERVICE, HEALTH_STATUS), "sluice"
        ),
        # infra_autoscaling
        "sluice.infra.autoscaling.events": MetricSpec(
            "counter", "{event}", "Autoscaling events.", _S, "sluice"
        ),
        "sluice.infra.replica.count": MetricSpec(
            "updowncounter", "{replica}", "Replicas after the last scaling event.", _S, "sluice"
        ),
        # infra_alert
        "sluice.infra.alerts": MetricSpec(
            "counter", "{alert}", "Alerts raised, by severity.", (SERVICE, ALERT_SEVERITY), "sluice"
        ),
        # query_executed
        "db.client.operation.duration": MetricSpec(
            "histogram",
            "s",
            "Duration of the queries services report (query_executed).",
            (SERVICE, DB_SYSTEM_NAME, QUERY_KIND),
            "semconv stable",
            (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10),
            "The conventions' advisory boundaries for this metric, exactly: classic "
            "histograms only merge when their boundaries are equal, and this metric is "
            "shared with every other database instrumentation. Queries over 10 s land in "
            "the overflow bucket (count and sum still include them).",
        ),
        "sluice.query.rows_scanned": MetricSpec(
            "histogram",
            "{row}",
            "Rows scanned per query.",
            (SERVICE, QUERY_KIND),
            "sluice",
            _one_two_five(1, 10**10),
            "From a primary-key lookup (a few rows) to a report over an OLAP table (billions): "
            "1-2-5 steps per decade from 1 to 10^10, at most 2.5x between boundaries (the "
            "steps db.client.response.returned_rows uses, carried on past 10^4 because a scan "
            "reads far more rows than a query returns).",
        ),
        "sluice.query.complexity": MetricSpec(
            "histogram",
            "1",
            "Planner or heuristic complexity score per query.",
            (SERVICE, QUERY_KIND),
            "sluice",
            _one_two_five(0.1, 10**4),
            "The schema fixes no scale for the score, so the boundaries are logarithmic: "
            "1-2-5 steps from 0.1 to 10,000 keep at most 2.5x between boundaries over five "
            "decades, whichever scale a producer uses.",
        ),
    }
)


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


class _Latest:
    """The last value per attribute set, observed by an asynchronous UpDownCounter.

    The conventions make pool sizes and replica counts UpDownCounters; the events carry
    absolute samples, which is what the asynchronous instrument reports.
    """

    def __init__(self) -> None:
        self.values: dict[tuple[tuple[str, str], ...], float] = {}

    def set(self, value: float, attributes: Mapping[str, str]) -> None:
        self.values[tuple(sorted(attributes.items()))] = value

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, dict(attrs)) for attrs, value in self.values.items()]


def data_points(request: ExportMetricsServiceRequest) -> int:
    """Data points in an export (what ``rejected_data_points`` counts)."""
    total = 0
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    total += len(getattr(metric, kind).data_points)
    return total


def read_reply(body: bytes, content_type: str | None) -> tuple[int, str]:
    """(rejected data points, error message) from an OTLP/HTTP metrics reply.

    Protobuf unless the server says JSON (the specification has it answer in the
    request's encoding; some proxies answer JSON anyway). Raises ``ValueError`` when the
    body is not an ``ExportMetricsServiceResponse``.
    """
    if len(body) > MAX_REPLY_BYTES:
        raise ValueError(f"reply of {len(body)} bytes discarded (limit {MAX_REPLY_BYTES})")
    reply = ExportMetricsServiceResponse()
    try:
        if content_type and "json" in content_type.lower():
            json_format.Parse(body or b"{}", reply)
        else:
            reply.ParseFromString(body)
    except (DecodeError, json_format.ParseError, UnicodeDecodeError) as exc:
        raise ValueError(f"not an ExportMetricsServiceResponse: {exc}") from None
    partial = reply.partial_success
    return partial.rejected_data_points, partial.error_message


class _Batched:
    """A counter's ``add`` or a gauge's ``set`` kept for the end of the sink's write.

    The SDK's cost is per measurement (~5 µs: attributes cleaned and hashed, the view's
    aggregation found and locked), and a write carries thousands of infra events over a
    few dozen attribute sets: one ``add`` of the write's sum per set (a counter), its last
    value (a gauge) is what the SDK would have aggregated the measurements into anyway.
    Histograms keep one ``record`` per value (a distribution is not a sum)."""

    __slots__ = ("instrument", "into")

    def __init__(self, instrument: Any, into: dict) -> None:
        self.instrument, self.into = instrument, into

    def add(self, amount: float, attributes: Mapping[str, str]) -> None:
        key = (self.instrument, tuple(attributes.items()))
        self.into[key] = self.into.get(key, 0) + amount

    def set(self, value: float, attributes: Mapping[str, str]) -> None:
        self.into[(self.instrument, tuple(attributes.items()))] = value


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
        # Built by hand rather than Resource.create(), which also reads OTEL_* variables
        # from the environment: settings are read in one place (sluice.settings).
        resource = Resource(
            {
                "service.name": service_name,
                "service.instance.id": str(uuid.uuid4()),
                "service.version": SLUICE_VERSION,
                "telemetry.sdk.language": "python",
                "telemetry.sdk.name": "opentelemetry",
                "telemetry.sdk.version": OTEL_SDK_VERSION,
            },
            schema_url=SCHEMA_URL,
        )
        self.provider = MeterProvider(
            metric_readers=[self.reader], resource=resource, shutdown_on_exit=False
        )
        self.attr = CardinalityGuard()
        self._session = new_session()
        # one write's counter sums and last gauge values, by (instrument, attributes), handed
        # to the SDK once per write (see _Batched); histograms record each value themselves
        self._sums: dict[tuple[Any, tuple[tuple[str, str], ...]], float] = {}
        self._lasts: dict[tuple[Any, tuple[tuple[str, str], ...]], float] = {}
        self._recorders = self._instruments()

    def _instruments(self) -> dict[str, Callable[[Mapping[str, Any]], bool]]:
        meter = self.provider.get_meter("sluice", SLUICE_VERSION, schema_url=SCHEMA_URL)
        sync: dict[str, Any] = {}
        latest: dict[str, _Latest] = {}
        for name, spec in METRICS.items():
            if spec.instrument == "histogram":
                sync[name] = meter.create_histogram(
                    name,
                    spec.unit,
                    spec.description,
                    explicit_bucket_boundaries_advisory=spec.buckets,
                )
            elif spec.instrument == "counter":
                sync[name] = _Batched(
                    meter.create_counter(name, spec.unit, spec.description), self._sums
                )
            elif spec.instrument == "gauge":
                sync[name] = _Batched(
                    meter.create_gauge(name, spec.unit, spec.description), self._lasts
                )
            elif spec.instrument == "updowncounter":
                latest[name] = _Latest()
                meter.create_observable_up_down_counter(
                    name, [latest[name].observe], spec.unit, spec.description
                )
            else:  # pragma: no cover - a typo in METRICS
                raise ValueError(f"{name}: unknown instrument {spec.instrument}")
        a = self.attr

        def service(e: Mapping[str, Any]) -> dict[str, str]:
            return {SERVICE: a(SERVICE, e.get("service"))}

        def seconds(ms: float) -> float:
            return ms / 1000.0

        def pool(e: Mapping[str, Any]) -> bool:
            size, used, waiting = e.get("pool_size"), e.get("pool_in_use"), e.get("pool_waiting")
            attrs = {**service(e), POOL: a(POOL, e.get("pool_name"))}
            if used is not None:
                latest["db.client.connection.count"].set(used, {**attrs, STATE: "used"})
            if size is not None:
                latest["db.client.connection.max"].set(size, attrs)
            if waiting is not None:
                latest["db.client.connection.pending_requests"].set(waiting, attrs)
            return size is not None or used is not None or waiting is not None

        def error_rate(e: Mapping[str, Any]) -> bool:
            attrs = service(e)
            if e.get("error_count") is not None:
                sync["sluice.infra.errors"].add(e["error_count"], attrs)
            if e.get("request_count") is not None:
                sync["sluice.infra.requests"].add(e["request_count"], attrs)
            rate = e.get("error_rate")
            if rate is None and e.get("error_count") is not None and e.get("request_count"):
                rate = e["error_count"] / e["request_count"]
            if rate is not None:
                sync["sluice.infra.error_rate"].set(rate, attrs)
            return rate is not None or e.get("error_count") is not None

        def latency(e: Mapping[str, Any]) -> bool:
            value = e.get("latency_ms")
            if value is None:
                return False
            if e.get("percentile") is not None:  # a pre-aggregated percentile, not a sample
                attrs = {**service(e), PERCENTILE: percentile_label(e["percentile"])}
                sync["sluice.infra.latency_percentile"].set(seconds(value), attrs)
            else:
                sync["sluice.infra.latency"].record(seconds(value), service(e))
            return True

        def health(e: Mapping[str, Any]) -> bool:
            status = a(HEALTH_STATUS, e.get("health_status"), _HEALTH)
            sync["sluice.infra.health_checks"].add(1, {**service(e), HEALTH_STATUS: status})
            if status in _HEALTH:
                value = {"healthy": 1.0, "degraded": 0.5, "unhealthy": 0.0}[status]
                sync["sluice.infra.health"].set(value, service(e))
            return True

        def autoscaling(e: Mapping[str, Any]) -> bool:
            sync["sluice.infra.autoscaling.events"].add(1, service(e))
            if e.get("scale_to") is not None:
                latest["sluice.infra.replica.count"].set(e["scale_to"], service(e))
            return True

        def alert(e: Mapping[str, Any]) -> bool:
            severity = a(ALERT_SEVERITY, e.get("severity"), _SEVERITIES)
            sync["sluice.infra.alerts"].add(1, {**service(e), ALERT_SEVERITY: severity})
            return True

        def query(e: Mapping[str, Any]) -> bool:
            attrs = {**service(e), QUERY_KIND: a(QUERY_KIND, e.get("query_kind"))}
            recorded = False
            if e.get("query_duration_ms") is not None:
                sync["db.client.operation.duration"].record(
                    seconds(e["query_duration_ms"]), {**attrs, DB_SYSTEM_NAME: DB_SYSTEM}
                )
                recorded = True
            if e.get("rows_scanned") is not None:
                sync["sluice.query.rows_scanned"].record(e["rows_scanned"], attrs)
                recorded = True
            if e.get("query_complexity_score") is not None:
                sync["sluice.query.complexity"].record(e["query_complexity_score"], attrs)
                recorded = True
            return recorded

        return {
            "infra_connection_pool_metrics": pool,
            "infra_error_rate": error_rate,
            "infra_latency": latency,
            "infra_health_check": health,
            "infra_autoscaling": autoscaling,
            "infra_alert": alert,
            "query_executed": query,
        }

    def write(self, batch: Sequence[Envelope]) -> None:
        try:
            super().write(batch)
        finally:
            self._emit()

    def _emit(self) -> None:
        """Hand the write's counter sums and gauge values to the SDK (before any export)."""
        sums, lasts = self._sums, self._lasts
        for (counter, attrs), total in sums.items():
            counter.add(total, dict(attrs))
        for (gauge, attrs), value in lasts.items():
            gauge.set(value, dict(attrs))
        sums.clear()
        lasts.clear()

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

    def export_request(self) -> ExportMetricsServiceRequest | None:
        """The current cumulative state as an OTLP ``ExportMetricsServiceRequest``."""
        data = self.reader.get_metrics_data()
        if data is None or not data.resource_metrics:
            return None
        return encode_metrics(data)

    async def send(self, items: list[Any]) -> None:
        request = self.export_request()
        if request is None:
            return
        response = await in_thread(
            post,
            self._session,
            self.url,
            request.SerializeToString(),
            headers=self.headers,
            timeout=self.timeout_s,
        )
        self._check_reply(response.content, response.headers.get("Content-Type"), request)

    def _check_reply(
        self, body: bytes, content_type: str | None, request: ExportMetricsServiceRequest
    ) -> None:
        """Count, log and report what a 2xx reply says was not kept (once per export)."""
        try:
            rejected, message = read_reply(body, content_type)
        except ValueError as exc:
            self.observer.partial(self.name, 0, f"unreadable reply: {exc}")
            log.warning("sink %s: export answered 2xx with an unreadable reply: %s", NAME, exc)
            return
        if not rejected and not message:
            return  # full success (an empty partial_success means the same)
        total = data_points(request)
        self.observer.partial(self.name, rejected, message)
        if rejected:
            log.warning(
                "sink %s: the backend rejected %d of %d data points: %s",
                NAME,
                rejected,
                total,
                message or "(no message)",
            )
        else:
            log.warning("sink %s: the backend kept every data point, warning: %s", NAME, message)
        if rejected >= total > 0:  # nothing was kept: a refusal in all but status code
            raise PermanentError("otlp_rejected", message[:300])

    async def close(self) -> None:
        await super().close()
        self._session.close()
        self.provider.shutdown()
