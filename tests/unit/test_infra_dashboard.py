"""The infra dashboard (deploy/grafana/dashboards/sluice-infra.json) queries exactly the
names Prometheus gives the observability sink's metrics, and docs/sinks.md lists them.

Prometheus (its OTLP receiver, or the collector's prometheus exporter) names OTLP metrics
with github.com/prometheus/otlptranslator, strategy UnderscoreEscapingWithSuffixes:
characters outside [a-zA-Z0-9:] become ``_``; a unit becomes a suffix (``s`` → ``seconds``,
``1`` → nothing, ``{annotations}`` → nothing); a monotonic Sum gets ``_total``, a Gauge
with unit ``1`` gets ``_ratio``; histograms add ``_bucket``, ``_sum``, ``_count``.
:func:`prometheus_name` is those rules for the units and instruments Sluice uses.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sinks.observability import ATTRIBUTE_KEYS, METRICS, MetricSpec

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "sluice-infra.json"
DOCS = ROOT / "docs" / "sinks.md"
UNIT_SUFFIX = {"s": "seconds", "1": ""}


def prometheus_name(name: str, spec: MetricSpec) -> str:
    tokens = [t for t in re.split(r"[^a-zA-Z0-9:]", name) if t]
    suffix = UNIT_SUFFIX.get(spec.unit, "" if spec.unit.startswith("{") else spec.unit)
    if suffix and suffix not in tokens:
        tokens.append(suffix)
    if spec.instrument == "counter":
        tokens = [t for t in tokens if t != "total"] + ["total"]
    if spec.unit == "1" and spec.instrument == "gauge":
        tokens = [t for t in tokens if t != "ratio"] + ["ratio"]
    return "_".join(tokens)


def label_name(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def series() -> dict[str, str]:
    """Every series name Prometheus can hold for the sink's metrics → the OTLP name."""
    out = {}
    for name, spec in METRICS.items():
        base = prometheus_name(name, spec)
        if spec.instrument == "histogram":
            out.update({f"{base}_{part}": name for part in ("bucket", "sum", "count")})
        else:
            out[base] = name
    return out


def test_prometheus_names_follow_the_translator():
    names = {n: prometheus_name(n, s) for n, s in METRICS.items()}
    assert names["db.client.operation.duration"] == "db_client_operation_duration_seconds"
    assert names["db.client.connection.count"] == "db_client_connection_count"
    assert names["sluice.infra.errors"] == "sluice_infra_errors_total"
    assert names["sluice.infra.error_rate"] == "sluice_infra_error_rate_ratio"
    assert names["sluice.query.rows_scanned"] == "sluice_query_rows_scanned"
    assert names["sluice.infra.latency_percentile"] == "sluice_infra_latency_percentile_seconds"


def test_dashboard_queries_only_exported_names_and_shows_every_metric():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    known = series()
    used = set()
    for expr in exprs:
        for token in re.findall(r"\b(?:db|sluice)_[a-z_]+\b(?!\s*[=!~])", expr):
            if token in {label_name(k) for k in ATTRIBUTE_KEYS}:
                continue  # a label in by (...)
            assert token in known, (token, expr)
            used.add(known[token])
    assert used == set(METRICS), set(METRICS) - used
    labels = {label_name(k) for k in ATTRIBUTE_KEYS} | {"le", "job", "instance"}
    for expr in exprs:
        for group in re.findall(r"by \(([^)]*)\)", expr):
            assert {g.strip() for g in group.split(",")} <= labels, expr
        for matcher in re.findall(r"\{([^}]*)\}", expr):
            for label in re.findall(r"([a-z_]+)\s*[=!~]", matcher):
                assert label in labels, expr
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_docs_list_every_prometheus_name():
    text = DOCS.read_text()
    for name, spec in METRICS.items():
        assert f"`{prometheus_name(name, spec)}`" in text, name
