"""The worker's Prometheus metrics (streams.metrics): bounded labels only."""

from __future__ import annotations

from streams.metrics import HealthMetrics


def test_label_values_stay_bounded():
    health = HealthMetrics()
    obs = health.observer()
    obs.skipped("posthog", "email_opened", "sampled_out")
    obs.skipped("posthog", "ann@example.com", "sampled_out")  # never a label value
    obs.retried("posthog", "http_429")
    obs.delivered("posthog", 10)
    obs.flushed("posthog", 0.2)
    text = health.exposition().decode()
    assert 'event_type="email_opened"' in text and 'event_type="other"' in text
    assert "example.com" not in text
    assert 'sluice_sink_retries_total{reason="http_429",sink="posthog"} 1.0' in text
    assert 'sluice_sink_delivered_events_total{sink="posthog"} 10.0' in text
    assert 'sluice_sink_flush_seconds_count{sink="posthog"} 1.0' in text


def test_each_worker_has_its_own_registry():
    a, b = HealthMetrics(), HealthMetrics()
    a.consumed.labels("email").inc()
    assert 'sluice_events_consumed_total{family="email"} 1.0' in a.exposition().decode()
    assert 'family="email"' not in b.exposition().decode()
