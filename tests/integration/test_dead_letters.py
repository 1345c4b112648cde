"""Records that cannot be decoded land on events.dlq with the reason and source
coordinates, raw bytes unchanged, and the stream goes on."""

from __future__ import annotations

import io
import signal
import struct

import fastavro
import pytest
from confluent_kafka import Consumer, Producer

from avro_schemas import default_repo
from avro_schemas.codec import Codec
from dev.workload import email_workload
from tests._sluice import Deployment
from topics.dead_letters import parse_headers

pytestmark = [pytest.mark.kafka, pytest.mark.integration]


def test_poison_records_are_dead_lettered_and_the_rest_counted(kafka_bootstrap, tmp_path):
    dep = Deployment(kafka_bootstrap, tmp_path)
    dep.run("topics", "create")
    wl = email_workload(emails=200, days=2, seed=2, duplicate_rate=0, orphans=0)
    good = Codec().encode("email", wl.events[0])
    poison = {
        "bad_magic": b"\x07garbage",
        "malformed_avro": good[:12],  # truncated body
        "unknown_schema": b"\xc3\x01" + struct.pack("<q", 12345) + good[10:],
        # valid Avro of the right schema, but an event type outside the taxonomy: only a
        # producer that bypasses validation can send it
        "unknown_event_type": _unvalidated(
            "email", dict(wl.events[0], event_type="email_teleported")
        ),
        "wrong_family": Codec().encode(
            "warmup",
            {
                "event_id": "0d5c1a8e-4a3b-4c1e-9b1a-2f3e4d5c6b7a",
                "event_type": "warmup_email_sent",
                "occurred_at": 0,
                "tenant_id": "acme",
                "source": "warmer",
                "mailbox_id": "m",
                "email_id": "w",
            },
        ),
    }
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for reason, value in poison.items():
        producer.produce(dep.topic("email"), key=b"acme", value=value, headers={"expect": reason})
    producer.flush(30)
    dep.produce(wl.events)
    dep.start_worker()
    dep.wait_drained()
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"{dep.name}-dlq-reader",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([f"{dep.prefix}events.dlq"])
    letters = []
    for _ in range(60):
        msg = consumer.poll(1.0)
        if msg is not None and not msg.error():
            letters.append(msg)
        if len(letters) == len(poison):
            break
    consumer.close()
    got = {}
    for msg in letters:
        headers = parse_headers(msg.headers())
        got[headers["reason"]] = (headers, msg.value())
    assert set(got) == set(poison)
    for reason, (headers, value) in got.items():
        assert value == poison[reason]  # raw bytes unchanged
        assert headers["source.topic"] == dep.topic("email")
        assert int(headers["source.partition"]) >= 0 and int(headers["source.offset"]) >= 0
        assert headers["stage"] == "decode" and headers["error"]
    total = dep.query("SELECT sum(sent) AS sent FROM campaign_analytics FINAL")[0]["sent"]
    assert total == len(wl.facts)


def _unvalidated(family: str, event: dict) -> bytes:
    sv = default_repo().latest_version(family)
    body = io.BytesIO()
    fastavro.schemaless_writer(body, sv.wire, {**event, "user_id": None})
    return b"\xc3\x01" + sv.fingerprint + body.getvalue()
