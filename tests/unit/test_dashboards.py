"""The Grafana dashboard and Prometheus provisioning (docker-compose.yml) stay valid and
only query metrics the worker exports (streams/metrics.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from streams.metrics import HealthMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "sluice.json"


def exported_series() -> set[str]:
    """Every series name the worker's registry can expose (counters with _total, ...)."""
    names: set[str] = set()
    for metric in HealthMetrics().registry.collect():
        base = metric.name
        names |= {base, f"{base}_total", f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    return names


def test_dashboard_parses_and_queries_only_exported_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs
    used = {name for e in exprs for name in re.findall(r"\bsluice_[a-z_]+", e)}
    assert used <= exported_series(), used - exported_series()
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("throughput", "lag", "error", "latency", "dead letters"):
        assert topic in titles


def test_compose_provisions_prometheus_and_grafana():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"prometheus", "grafana", "sluice"} <= set(services)
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["sluice:6066"]
    assert services["sluice"]["environment"]["SLUICE_WEB_HOST"] == "0.0.0.0"
