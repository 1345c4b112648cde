"""The observability sink's metrics follow the OpenTelemetry semantic conventions it claims
(v1.44.0, vendored in tests/unit/reference/ by dev/refdata/vendor.py): names, instruments,
units, required attributes and their values, advisory buckets; everything else is under
``sluice.``; every histogram has boundaries chosen for its quantity."""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest

from sinks.base import Envelope
from sinks.observability import (
    ATTRIBUTE_KEYS,
    METRICS,
    SCHEMA_URL,
    SEMCONV_VERSION,
    ObservabilitySink,
)

REFERENCE = Path(__file__).parent / "reference" / f"semconv-{SEMCONV_VERSION}.json"
SEMCONV = json.loads(REFERENCE.read_text())
DOCS = Path(__file__).resolve().parents[2] / "docs" / "sinks.md"

# OTLP data kind and Sum properties each instrument exports (cumulative temporality = 2)
OTLP_KIND = {
    "histogram": ("histogram", None),
    "counter": ("sum", True),
    "updowncounter": ("sum", False),
    "gauge": ("gauge", None),
}


def every_kind_of_event() -> list[dict[str, Any]]:
    base = {"occurred_at": 1_763_500_000_000, "tenant_id": "t", "source": "api", "service": "api"}
    return [
        {**base, "event_type": "infra_connection_pool_metrics", "pool_name": "pg"}
        | {"pool_size": 20, "pool_in_use": 15, "pool_waiting": 4},
        {**base, "event_type": "infra_error_rate", "error_count": 5, "request_count": 100},
        {**base, "event_type": "infra_latency", "latency_ms": 120.0},
        {**base, "event_type": "infra_latency", "latency_ms": 900.0, "percentile": 99.0},
        {**base, "event_type": "infra_health_check", "health_status": "degraded"},
        {**base, "event_type": "infra_autoscaling", "scale_from": 2, "scale_to": 3},
        {**base, "event_type": "infra_alert", "severity": "warning"},
        {**base, "event_type": "query_executed", "query_kind": "report"}
        | {"query_duration_ms": 42.0, "rows_scanned": 12_345, "query_complexity_score": 3.5},
    ]


def recorded(events: list[dict[str, Any]]) -> Any:
    """The ExportMetricsServiceRequest a sink would send after these events."""
    sink = ObservabilitySink("http://127.0.0.1:9/v1/metrics")
    sink.write([Envelope({"event_id": str(i), **e}, "t", 0, i) for i, e in enumerate(events)])
    request = sink.export_request()
    asyncio.run(sink.close())
    return request


def exported() -> dict[str, Any]:
    request = recorded(every_kind_of_event())
    (rm,) = request.resource_metrics
    (sm,) = rm.scope_metrics
    return {m.name: m for m in sm.metrics}


def test_the_reference_is_the_version_the_sink_claims():
    assert SEMCONV["_provenance"]["tag"] == f"v{SEMCONV_VERSION}"
    assert SCHEMA_URL.endswith(f"/schemas/{SEMCONV_VERSION}")


@pytest.mark.parametrize(
    "name", [n for n, s in METRICS.items() if s.convention.startswith("semconv")]
)
def test_conventional_metrics_match_the_conventions(name: str):
    spec, ref = METRICS[name], SEMCONV["metrics"][name]
    assert spec.convention == f"semconv {ref['stability']}"
    assert spec.instrument == ref["instrument"]
    assert spec.unit == ref["unit"]
    required = {a for a, level in ref["attributes"].items() if level == "required"}
    assert required <= set(spec.attributes)
    if "advisory_buckets" in ref:
        assert list(spec.buckets) == ref["advisory_buckets"]


def test_every_other_metric_is_sluices_own_and_clashes_with_no_namespace():
    own = [n for n, s in METRICS.items() if s.convention == "sluice"]
    assert own and all(n.startswith("sluice.") for n in own)
    assert "sluice" not in SEMCONV["namespaces"]
    conventional = [n for n, s in METRICS.items() if s.convention != "sluice"]
    assert all(n in SEMCONV["metrics"] for n in conventional)


def test_attribute_keys_are_conventional_or_namespaced():
    for key in ATTRIBUTE_KEYS:
        assert key in SEMCONV["attributes"] or key.startswith("sluice."), key
    for name, spec in METRICS.items():
        assert set(spec.attributes) <= ATTRIBUTE_KEYS, name


def test_no_metric_name_is_also_a_namespace():
    # the conventions' naming rule: `a.b` as a metric forbids `a.b.c`
    for name in METRICS:
        assert not any(other.startswith(name + ".") for other in METRICS), name


def test_durations_are_seconds_and_units_are_ucum():
    for name, spec in METRICS.items():
        if re.search(r"duration|latency|time$", name):
            assert spec.unit == "s", name
        assert spec.unit == "1" or spec.unit == "s" or re.fullmatch(r"\{[a-z_]+\}", spec.unit)


def test_every_histogram_has_boundaries_chosen_for_its_quantity():
    histograms = {n: s for n, s in METRICS.items() if s.instrument == "histogram"}
    assert len(histograms) == 4
    for name, spec in histograms.items():
        assert spec.buckets and len(spec.buckets_why) > 40, name
        assert all(a < b for a, b in zip(spec.buckets, spec.buckets[1:], strict=False)), name
    for name, spec in METRICS.items():
        if spec.instrument != "histogram":
            assert not spec.buckets, name


def test_the_export_has_the_declared_kind_unit_buckets_and_attributes():
    metrics = exported()
    assert set(metrics) == set(METRICS)
    for name, metric in metrics.items():
        spec = METRICS[name]
        kind, monotonic = OTLP_KIND[spec.instrument]
        assert metric.WhichOneof("data") == kind, name
        data = getattr(metric, kind)
        assert metric.unit == spec.unit and metric.description == spec.description
        if kind != "gauge":
            assert data.aggregation_temporality == 2, name  # cumulative
        if kind == "sum":
            assert data.is_monotonic is monotonic, name
        for point in data.data_points:
            keys = {a.key for a in point.attributes}
            assert keys == set(spec.attributes), (name, keys)
            if kind == "histogram":
                assert list(point.explicit_bounds) == list(spec.buckets), name


def test_enum_attribute_values_are_the_conventions():
    metrics = exported()
    for name in ("db.client.connection.count", "db.client.operation.duration"):
        for point in getattr(metrics[name], metrics[name].WhichOneof("data")).data_points:
            for a in point.attributes:
                ref = SEMCONV["attributes"].get(a.key)
                if ref and ref["members"]:
                    assert a.value.string_value in ref["members"], (name, a.key)


def test_values_are_converted_to_seconds():
    metrics = exported()
    (duration,) = metrics["db.client.operation.duration"].histogram.data_points
    assert duration.sum == pytest.approx(0.042)
    (latency,) = metrics["sluice.infra.latency"].histogram.data_points
    assert latency.sum == pytest.approx(0.120)
    (p99,) = metrics["sluice.infra.latency_percentile"].gauge.data_points
    assert p99.as_double == pytest.approx(0.9)


def test_resource_and_scope_name_the_worker_and_the_conventions_version():
    request = recorded(every_kind_of_event())
    (rm,) = request.resource_metrics
    attrs = {a.key: a.value.string_value for a in rm.resource.attributes}
    assert attrs["service.name"] == "sluice" and len(attrs["service.instance.id"]) == 36
    assert rm.schema_url == SCHEMA_URL and rm.scope_metrics[0].schema_url == SCHEMA_URL
    assert rm.scope_metrics[0].scope.name == "sluice"
    other = recorded(every_kind_of_event()).resource_metrics[0]
    other_attrs = {a.key: a.value.string_value for a in other.resource.attributes}
    assert other_attrs["service.instance.id"] != attrs["service.instance.id"]  # one writer each


def bucket_counts(name: str, values: list[float], field: str, event_type: str) -> list[int]:
    events = [
        {"occurred_at": 0, "tenant_id": "t", "source": "s", "event_type": event_type, field: v}
        for v in values
    ]
    metrics = {m.name: m for m in recorded(events).resource_metrics[0].scope_metrics[0].metrics}
    (point,) = metrics[name].histogram.data_points
    assert point.count == len(values)
    return list(point.bucket_counts)


def test_rows_scanned_spread_over_the_buckets_not_the_overflow():
    # what the issue saw: 201 samples, 200 of them past the SDK's default 10,000
    rng = random.Random(7)
    rows = [int(10 ** rng.uniform(0, 9.5)) for _ in range(201)]
    counts = bucket_counts("sluice.query.rows_scanned", rows, "rows_scanned", "query_executed")
    assert counts[-1] == 0  # nothing overflows up to 10^10
    assert max(counts) <= 0.1 * len(rows)  # no bucket holds more than a tenth
    assert sum(1 for c in counts if c) >= 20


def test_durations_spread_over_the_buckets():
    rng = random.Random(8)
    ms = [10 ** rng.uniform(0, math.log10(8000)) for _ in range(200)]  # 1 ms to 8 s
    query = ("query_duration_ms", "query_executed")
    counts = bucket_counts("db.client.operation.duration", ms, *query)
    assert counts[-1] == 0 and max(counts) <= 0.3 * len(ms)
    counts = bucket_counts("sluice.infra.latency", ms, "latency_ms", "infra_latency")
    assert counts[-1] == 0 and max(counts) <= 0.2 * len(ms)


def test_docs_name_the_version_every_metric_and_the_migration():
    text = DOCS.read_text()
    assert f"v{SEMCONV_VERSION}" in text
    for name in METRICS:
        assert f"`{name}`" in text, name
    for old in ("infra.pool.size", "infra.latency", "query.duration", "query.rows_scanned"):
        assert f"`{old}`" in text, old  # the migration note maps the old names
