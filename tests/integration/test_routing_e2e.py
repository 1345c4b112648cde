"""End to end through the real worker: every routed event arrives exactly where the
routing table says and nowhere else; a refused event lands on events.dlq; nothing that
leaves for PostHog or OTLP, and no worker log line, carries a clear-text email or IP."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException

from streams.routing import OBSERVABILITY, POSTHOG, SIEM, sink_targets
from tests._receivers import Fault, HttpReceiver, Rsyslog, require_rsyslog
from tests._sluice import Deployment
from topics.dead_letters import parse_headers
from topics.taxonomy import EVENT_TYPES

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+\.[A-Za-z]{2,}")
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
LOOPBACK = {"127.0.0.1", "0.0.0.0"}  # our own receivers and binds, not anyone's PII


@dataclass
class RoutedDeployment(Deployment):
    """A Deployment whose worker gets the sinks' settings too."""

    sink_env: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(**{**self.sink_env, **extra})

    def lag(self) -> int:
        # a new group's coordinator may still be loading: ask again
        for _ in range(20):
            try:
                return super().lag()
            except KafkaException:
                time.sleep(0.5)
        return super().lag()


def every_event_type(copies: int = 3) -> list[dict[str, Any]]:
    events = []
    for family, types in EVENT_TYPES.items():
        for event_type in sorted(types):
            for i in range(copies):
                e: dict[str, Any] = {
                    "event_id": str(uuid.uuid4()),
                    "event_type": event_type,
                    "occurred_at": "2026-11-02T10:00:00Z",
                    "tenant_id": f"tenant-{i}",
                    "source": "svc",
                    "user_id": f"ann{i}@example.com" if i == 0 else f"u{i}",
                }
                if family in ("email", "warmup"):
                    e.update(email_id=f"em-{uuid.uuid4().hex[:8]}", mailbox_id="mb-1")
                if family == "email":
                    e.update(
                        campaign_id="c-1",
                        lead_id=f"ld-{i}",
                        recipient_email=f"lead{i}@example.com",
                        ip_address=f"198.51.100.{i + 1}",
                        bounce_reason="550 <lead@example.com>",
                    )
                if family in ("security", "admin_action"):
                    e.update(ip_address=f"203.0.113.{i + 1}")
                if family == "security":
                    e.update(sensitive=i == 1, user_agent="Mozilla/5.0")
                if event_type == "infra_latency":
                    e.update(service="api", latency_ms=10.0 * (i + 1))
                if event_type == "infra_alert":
                    e.update(service="api", severity="critical", message="disk full on 10.2.3.4")
                if family == "admin_ui":
                    e.update(page=f"/leads/lead{i}@example.com", filter_value="bob@example.com")
                events.append(e)
    return events


def read_dlq(bootstrap: str, topic: str, expect: int, timeout: float = 30) -> list[dict[str, str]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"dlq-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    out: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expect and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                out.append(parse_headers(msg.headers()))
    finally:
        consumer.close()
    return out


def test_every_routed_event_arrives_exactly_where_the_table_says(kafka_bootstrap, tmp_path):
    require_rsyslog()
    events = every_event_type()
    poison = next(e for e in events if e["event_type"] == "admin_button_clicked")
    by_sink: dict[str, set[str]] = {POSTHOG: set(), SIEM: set(), OBSERVABILITY: set()}
    for e in events:
        for sink in sink_targets(e):
            by_sink[sink].add(e["event_id"])
    all_ids = {e["event_id"] for e in events}

    with HttpReceiver() as rx, Rsyslog(tmp_path / "rsyslog") as rs:
        rx.faults = [Fault(500), Fault(429, {"Retry-After": "1"})]
        rx.poison = {poison["event_id"]}
        rx.otlp_partial = [(1, "one point refused (test)")]  # the first OTLP reply
        dep = RoutedDeployment(
            kafka_bootstrap,
            tmp_path,
            sink_env={
                "POSTHOG_API_KEY": "phc_e2e",
                "POSTHOG_HOST": rx.url,
                "PII_HMAC_KEY": "e2e-secret",
                "OTEL_EXPORTER_OTLP_ENDPOINT": rx.url,
                "SIEM_SYSLOG_ADDRESS": f"127.0.0.1:{rs.port}",
                "SIEM_HEC_URL": f"{rx.url}/services/collector/event",
                "SIEM_HEC_TOKEN": "tok",
                "SINK_TIMEOUT_S": "2",
                "SINK_RETRY_INITIAL_S": "0.05",
                "SINK_FLUSH_DEADLINE_S": "10",
            },
        )
        dep.run("topics", "create")
        dep.produce(events)
        dep.start_worker()
        try:
            dep.wait_drained()
            metrics_url = f"http://127.0.0.1:{dep.web_port}/metrics"
            with urllib.request.urlopen(metrics_url, timeout=10) as r:
                metrics = r.read().decode()
            status_url = f"http://127.0.0.1:{dep.web_port}/sluice/status/"
            with urllib.request.urlopen(status_url, timeout=10) as r:
                status = json.loads(r.read())
            assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
        finally:
            if dep.worker is not None:  # a failed wait: never leave a worker behind
                dep.stop_worker(signal.SIGKILL)
        posthog = rx.posthog_uuids()
        hec = rx.hec_ids()
        deadline = time.monotonic() + 15  # rsyslogd writes its file asynchronously
        while not set(syslog := rs.ids()) >= by_sink[SIEM] and time.monotonic() < deadline:
            time.sleep(0.2)
        points = rx.otlp_points()
        http_bodies = list(rx.bodies)

    # PostHog: every routed event but the refused one, once by uuid; nothing else
    assert set(posthog) == by_sink[POSTHOG] - {poison["event_id"]}
    # SIEM, both transports: exactly the SIEM-routed events
    assert set(hec) == by_sink[SIEM]
    assert set(syslog) == by_sink[SIEM]
    # Observability: the infra events became metrics (3 latencies, 3 alerts)
    assert sum(v for _, v in points["sluice.infra.latency"]) == 3
    assert sum(v for _, v in points["sluice.infra.alerts"]) == 3
    # the backend's partial success: counted, and in the worker's status with its message
    assert 'sluice_sink_rejected_points_total{sink="observability"} 1.0' in metrics
    partial = status["sinks"]["partial_success"]["observability"]
    assert partial["rejected_points"] == 1 and partial["last_message"] == "one point refused (test)"
    # nowhere else: an event id shows up only in the bodies of its own sinks
    for body in http_bodies:
        text = body.decode("utf-8", "replace")
        leaked = {i for i in all_ids - by_sink[POSTHOG] - by_sink[SIEM] if i in text}
        assert not leaked, leaked
    # the refused event is on the DLQ, with the sink as stage and its source coordinates
    dlq = read_dlq(kafka_bootstrap, f"{dep.prefix}events.dlq", expect=1)
    assert [(d["stage"], d["reason"]) for d in dlq] == [("posthog", "http_400")]
    assert dlq[0]["source.topic"] == dep.topic("admin_ui") and dlq[0]["source.offset"].isdigit()
    # no clear-text email or IP in what left for PostHog/OTLP, nor in the worker's log
    siem_free = [b for b in http_bodies if b"/services/collector" not in b and b'"ecs"' not in b]
    for text in [b.decode("utf-8", "replace") for b in siem_free] + dep.log_tail(
        100_000
    ).splitlines():
        assert not EMAIL.search(text), EMAIL.search(text)
        assert not set(IPV4.findall(text)) - LOOPBACK, IPV4.findall(text)
    # the worker's own health on /metrics
    assert 'sluice_events_routed_total{sink="posthog"}' in metrics
    assert 'sluice_dead_letters_total{reason="http_400",stage="posthog"}' in metrics
    assert "sluice_sink_retries_total" in metrics and "sluice_consumer_lag" in metrics
    assert "tenant-" not in metrics and "example.com" not in metrics
