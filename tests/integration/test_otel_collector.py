"""The observability sink against a real OpenTelemetry Collector (v0.165.0, built from the
Go module proxy by dev/otelcol/build.sh): every point accepted, none refused, and what the
collector holds has the conventions' names, units, kinds, attributes and the exact values
of the events — through a collector restart, with the events sent while it was down."""

from __future__ import annotations

import asyncio
import bisect
import random
from collections import Counter, defaultdict
from typing import Any

import pytest

from sinks.base import BatchLimits, Envelope, RetryPolicy
from sinks.observability import METRICS, SCHEMA_URL, ObservabilitySink
from streams.metrics import HealthMetrics
from tests._otelcol import Collector, collector_binary

pytestmark = [pytest.mark.integration]

FAST = RetryPolicy(initial_s=0.05, max_s=0.3, jitter=0.1)
KINDS = ("dashboard", "report", "export")
SERVICES = ("api", "mailer")


def events(seed: int, n: int) -> list[dict[str, Any]]:
    """Every kind of infra event, and queries, with values over many orders of magnitude."""
    rng = random.Random(seed)
    base = {"occurred_at": 1_763_500_000_000, "tenant_id": "acme", "source": "svc"}
    out: list[dict[str, Any]] = []
    for i in range(n):
        service = SERVICES[(i // 8) % 2]  # every kind of event from both services
        e = {**base, "event_id": f"{seed}-{i}", "service": service}
        kind = i % 8
        if kind == 0:
            e |= {"event_type": "infra_connection_pool_metrics", "pool_name": f"pg-{i % 3}"}
            e |= {
                "pool_size": 20,
                "pool_in_use": rng.randrange(21),
                "pool_waiting": rng.randrange(6),
            }
        elif kind == 1:
            e |= {"event_type": "infra_latency", "latency_ms": 10 ** rng.uniform(0, 5)}
        elif kind == 2:
            e |= {"event_type": "infra_latency", "latency_ms": rng.uniform(100, 900)}
            e["percentile"] = 99.0
        elif kind == 3:
            errors, requests = rng.randrange(50), 1000
            e |= {"event_type": "infra_error_rate", "error_count": errors}
            e |= {"request_count": requests}
        elif kind == 4:
            status = rng.choice(("healthy", "healthy", "degraded", "unhealthy"))
            e |= {"event_type": "infra_health_check", "health_status": status}
        elif kind == 5:
            e |= {
                "event_type": "infra_autoscaling",
                "scale_from": 2,
                "scale_to": rng.randrange(2, 9),
            }
        elif kind == 6:
            e |= {"event_type": "infra_alert", "severity": rng.choice(("critical", "warning"))}
        else:
            e |= {"event_type": "query_executed", "query_kind": KINDS[i % 3]}
            e |= {
                "query_duration_ms": 10 ** rng.uniform(-0.5, 4.3),
                "rows_scanned": int(10 ** rng.uniform(0, 9.8)),
                "query_complexity_score": 10 ** rng.uniform(-1, 4),
            }
        out.append(e)
    return out


def bucket_counts(values: list[float], bounds: tuple[float, ...]) -> list[int]:
    """OTLP explicit buckets: bucket i holds (bounds[i-1], bounds[i]]; the last is overflow."""
    counts = [0] * (len(bounds) + 1)
    for v in values:
        counts[bisect.bisect_left(bounds, v)] += 1
    return counts


def expected(all_events: list[dict[str, Any]]) -> dict[str, dict[frozenset, Any]]:
    """metric → attributes → value (sum / last value) or histogram (count, sum, buckets)."""
    sums: dict[str, dict[frozenset, float]] = defaultdict(lambda: defaultdict(float))
    last: dict[str, dict[frozenset, float]] = defaultdict(dict)
    samples: dict[str, dict[frozenset, list[float]]] = defaultdict(lambda: defaultdict(list))
    for e in all_events:
        svc = ("sluice.service.name", e["service"])
        t = e["event_type"]
        if t == "infra_connection_pool_metrics":
            pool = frozenset({svc, ("db.client.connection.pool.name", e["pool_name"])})
            last["db.client.connection.count"][pool | {("db.client.connection.state", "used")}] = e[
                "pool_in_use"
            ]
            last["db.client.connection.max"][pool] = e["pool_size"]
            last["db.client.connection.pending_requests"][pool] = e["pool_waiting"]
        elif t == "infra_latency" and "percentile" in e:
            attrs = frozenset({svc, ("sluice.latency.percentile", "p99")})
            last["sluice.infra.latency_percentile"][attrs] = e["latency_ms"] / 1000
        elif t == "infra_latency":
            samples["sluice.infra.latency"][frozenset({svc})].append(e["latency_ms"] / 1000)
        elif t == "infra_error_rate":
            sums["sluice.infra.errors"][frozenset({svc})] += e["error_count"]
            sums["sluice.infra.requests"][frozenset({svc})] += e["request_count"]
            last["sluice.infra.error_rate"][frozenset({svc})] = (
                e["error_count"] / e["request_count"]
            )
        elif t == "infra_health_check":
            attrs = frozenset({svc, ("sluice.health.status", e["health_status"])})
            sums["sluice.infra.health_checks"][attrs] += 1
            value = {"healthy": 1.0, "degraded": 0.5, "unhealthy": 0.0}[e["health_status"]]
            last["sluice.infra.health"][frozenset({svc})] = value
        elif t == "infra_autoscaling":
            sums["sluice.infra.autoscaling.events"][frozenset({svc})] += 1
            last["sluice.infra.replica.count"][frozenset({svc})] = e["scale_to"]
        elif t == "infra_alert":
            sums["sluice.infra.alerts"][
                frozenset({svc, ("sluice.alert.severity", e["severity"])})
            ] += 1
        else:
            kind = ("sluice.query.kind", e["query_kind"])
            duration = frozenset({svc, kind, ("db.system.name", "other_sql")})
            samples["db.client.operation.duration"][duration].append(e["query_duration_ms"] / 1000)
            samples["sluice.query.rows_scanned"][frozenset({svc, kind})].append(e["rows_scanned"])
            samples["sluice.query.complexity"][frozenset({svc, kind})].append(
                e["query_complexity_score"]
            )
    out: dict[str, dict[frozenset, Any]] = {**sums, **last}
    for name, series in samples.items():
        bounds = METRICS[name].buckets
        out[name] = {
            attrs: (len(v), sum(v), bucket_counts(v, bounds)) for attrs, v in series.items()
        }
    return out


def held(request: Any) -> dict[str, tuple[Any, dict[frozenset, Any]]]:
    """metric → (the OTLP metric, attributes → value) from one exported request."""
    out = {}
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                points = {}
                for p in getattr(m, kind).data_points:
                    attrs = frozenset((a.key, a.value.string_value) for a in p.attributes)
                    if kind == "histogram":
                        points[attrs] = (p.count, p.sum, list(p.bucket_counts))
                    else:
                        points[attrs] = (
                            p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
                        )
                out[m.name] = (m, points)
    return out


def test_real_collector_accepts_every_point_with_names_units_and_values(tmp_path):
    binary = collector_binary()
    first, second = events(1, 400), events(2, 400)
    health = HealthMetrics()
    envelopes = [Envelope(e, "events.infra", 0, i) for i, e in enumerate(first + second)]

    with Collector(binary, tmp_path / "otelcol") as collector:
        sink = ObservabilitySink(
            collector.url,
            timeout_s=2.0,
            limits=BatchLimits(10_000, 0.2, 1, 3.0),
            policy=FAST,
            observer=health.observer(),
        )

        async def run() -> None:
            await sink.start()
            sink.write(envelopes[: len(first)])
            assert await sink.flush() == []
            accepted_first = collector.own_metrics()
            collector.stop()  # the collector restarts; events keep coming meanwhile
            sink.write(envelopes[len(first) :])
            with pytest.raises(Exception, match="unavailable"):
                await sink.flush()
            assert sink.buffered() == len(second)  # nothing lost, nothing acked
            collector.start()
            assert await sink.flush() == []
            assert sink.buffered() == 0
            await sink.close()
            return accepted_first

        own_first = asyncio.run(run())
        (last,) = collector.wait_exports(1)[-1:]
        own = collector.own_metrics()
        log = collector.log.read_text()

    http = '{receiver="otlp",transport="http"}'
    for counters in (own_first, own):
        assert counters[f"otelcol_receiver_accepted_metric_points{http}"] > 0, log[-2000:]
        assert counters[f"otelcol_receiver_refused_metric_points{http}"] == 0
        assert counters.get(f"otelcol_receiver_failed_metric_points{http}", 0) == 0
    assert health.partial_success == {}  # every reply: full success

    (rm,) = last.resource_metrics
    resource = {a.key: a.value.string_value for a in rm.resource.attributes}
    assert resource["service.name"] == "sluice" and resource["service.instance.id"]
    assert rm.schema_url == SCHEMA_URL and rm.scope_metrics[0].schema_url == SCHEMA_URL
    got = held(last)
    want = expected(first + second)  # cumulative: the export after the restart holds all
    assert set(got) == set(METRICS)
    for name, spec in METRICS.items():
        metric, points = got[name]
        kind = metric.WhichOneof("data")
        assert metric.unit == spec.unit, name
        assert kind == {"histogram": "histogram", "gauge": "gauge"}.get(spec.instrument, "sum")
        if kind == "sum":
            assert metric.sum.is_monotonic is (spec.instrument == "counter"), name
            assert metric.sum.aggregation_temporality == 2, name
        if kind == "histogram":
            for p in metric.histogram.data_points:
                assert list(p.explicit_bounds) == list(spec.buckets), name
            assert set(points) == set(want[name]), name
            for attrs, (count, total, buckets) in want[name].items():
                assert points[attrs][0] == count, (name, attrs)
                assert points[attrs][1] == pytest.approx(total, rel=1e-9), (name, attrs)
                assert points[attrs][2] == buckets, (name, attrs)
        else:
            assert points == pytest.approx(want[name]), name
    # the histograms say something: no more than a tenth of any sample in the overflow
    for name in ("sluice.query.rows_scanned", "db.client.operation.duration"):
        overflow = Counter()
        for count, _, buckets in got[name][1].values():
            overflow["all"] += count
            overflow["over"] += buckets[-1]
        assert overflow["over"] <= 0.1 * overflow["all"], name
