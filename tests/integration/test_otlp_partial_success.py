"""The observability sink reads every OTLP reply: a partial success is counted, logged once
per export and visible in the worker's health; it is not retried (the OTLP specification
forbids it); a reply that keeps nothing dead-letters the events like a 4xx."""

from __future__ import annotations

import asyncio
import logging

from sinks.observability import ObservabilitySink
from streams.metrics import HealthMetrics
from tests._receivers import Fault, HttpReceiver
from tests.integration.test_sinks import FAST, infra_events, limits, run_sink


def sink_at(rx: HttpReceiver, health: HealthMetrics) -> ObservabilitySink:
    return ObservabilitySink(
        f"{rx.url}/v1/metrics",
        timeout_s=1.0,
        limits=limits(10_000),
        policy=FAST,
        observer=health.observer(),
    )


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_partial_success_is_counted_logged_and_in_status_not_retried(caplog):
    health = HealthMetrics()
    with HttpReceiver() as rx:
        rx.otlp_partial = [(3, "3 data points out of order")]
        rejected = asyncio.run(run_sink(sink_at(rx, health), infra_events()))
        exports = rx.requests["/v1/metrics"]
    assert rejected == []  # the rest was kept: no dead letters
    assert exports == 1  # never retried
    entry = health.partial_success["observability"]
    assert entry["rejected_points"] == 3 and entry["replies"] == 1
    assert entry["last_message"] == "3 data points out of order" and entry["last_at"] > 0
    text = health.exposition().decode()
    assert 'sluice_sink_rejected_points_total{sink="observability"} 3.0' in text
    logged = [m for m in warnings_of(caplog) if "rejected" in m]
    assert len(logged) == 1 and "3 of " in logged[0] and "out of order" in logged[0]
    # delivered all the same: the accepted part carries the events' aggregate
    assert 'sluice_sink_delivered_events_total{sink="observability"}' in text


def test_warning_without_rejection_is_reported_with_zero_points(caplog):
    health = HealthMetrics()
    with HttpReceiver() as rx:
        rx.otlp_partial = [(0, "unit 'ms' is deprecated here")]
        assert asyncio.run(run_sink(sink_at(rx, health), infra_events()[:20])) == []
    entry = health.partial_success["observability"]
    assert entry["rejected_points"] == 0 and "deprecated" in str(entry["last_message"])
    assert any("deprecated" in m for m in warnings_of(caplog))


def test_a_reply_that_keeps_nothing_dead_letters_the_events():
    health = HealthMetrics()
    records = infra_events()[:10]
    with HttpReceiver() as rx:
        rx.otlp_partial = [(10_000, "every point refused")]
        rejected = asyncio.run(run_sink(sink_at(rx, health), records))
    assert len(rejected) == len(records)
    assert {(r.sink, r.reason) for r in rejected} == {("observability", "otlp_rejected")}
    assert health.partial_success["observability"]["rejected_points"] == 10_000


def test_a_full_success_reports_nothing():
    health = HealthMetrics()
    with HttpReceiver() as rx:
        assert asyncio.run(run_sink(sink_at(rx, health), infra_events())) == []
    assert health.partial_success == {}
    assert "sluice_sink_rejected_points_total{" not in health.exposition().decode()


def test_an_unreadable_reply_is_recorded_not_trusted_silently(caplog):
    health = HealthMetrics()
    with HttpReceiver() as rx:
        rx.faults = [Fault(200)]  # 2xx with a JSON body that is no ExportMetricsServiceResponse
        assert asyncio.run(run_sink(sink_at(rx, health), infra_events()[:20])) == []
    entry = health.partial_success["observability"]
    assert entry["rejected_points"] == 0 and "unreadable" in str(entry["last_message"])
    assert any("unreadable" in m for m in warnings_of(caplog))
