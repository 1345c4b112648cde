"""`sluice status`: lag from Kafka, flushes and dead letters from the running worker."""

from __future__ import annotations

import json
import signal

import pytest
from confluent_kafka import Producer

from dev.workload import email_workload, iso
from tests._sluice import Deployment

pytestmark = [pytest.mark.kafka, pytest.mark.integration]


def test_status_without_and_with_a_worker(kafka_bootstrap, tmp_path):
    dep = Deployment(kafka_bootstrap, tmp_path, partitions=2)
    dep.run("topics", "create")
    events = [
        {**e, "occurred_at": iso(e["occurred_at"])}
        for e in email_workload(emails=30, days=2, seed=9, orphans=0).events
    ]
    dep.produce(events)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(dep.topic("email"), key=b"acme", value=b"\x07garbage")
    producer.flush(30)

    # no worker: Kafka-side lag still shown, one clear error line, exit 1
    proc = dep.run("status", "--format", "json", check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "no worker answers" in proc.stderr
    body = json.loads(proc.stdout)
    assert body["worker"] is None
    assert body["total_lag"] == len(events) + 1
    assert {r["topic"] for r in body["lag"]} >= {dep.topic("email")}
    assert all(r["committed"] is None for r in body["lag"])
    table = dep.run("status", check=False)
    assert "total lag" in table.stdout and table.returncode == 1

    dep.start_worker()
    try:
        dep.wait_drained()
        body = json.loads(dep.run("status", "--format", "json").stdout)
        assert body["total_lag"] == 0 and not body["errors"]
        email_rows = [r for r in body["lag"] if r["topic"] == dep.topic("email")]
        assert sum(r["committed"] for r in email_rows) == sum(r["high"] for r in email_rows)
        worker = body["worker"]
        assert "campaign_analytics" in worker["last_flush"]
        assert worker["dead_letters_by_reason"] == {"decode": {"bad_magic": 1}}
        assert worker["state_store"]["kind"] == "rocksdb"  # the default
        assert worker["state_store"]["in_memory"] > 0
        text = dep.run("status").stdout
        assert "campaign_analytics" in text and "bad_magic" in text
        assert "in RocksDB" in text
    finally:
        assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()

    bad = dep.run("status", "--format", "yaml", check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
