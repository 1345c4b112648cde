"""`sluice dlq list` and `sluice dlq replay` against a real broker."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from avro_schemas.codec import Codec
from dev.workload import email_workload
from tests._sluice import Deployment
from topics.dead_letters import dead_letter_headers

pytestmark = [pytest.mark.kafka, pytest.mark.integration]


def _read_all(bootstrap: str, topic: str, partitions: int) -> list:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "t-reader"})
    got = []
    try:
        tps = [TopicPartition(topic, p, 0) for p in range(partitions)]
        consumer.assign(tps)
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p))[1]
            for p in range(partitions)
        }
        want = sum(ends.values())
        for _ in range(30):
            if len(got) >= want:
                break
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                got.append(msg)
    finally:
        consumer.close()
    return got


def test_dlq_list_and_replay(kafka_bootstrap, tmp_path):
    dep = Deployment(kafka_bootstrap, tmp_path)
    dep.run("topics", "create")
    good = Codec().encode("email", email_workload(emails=2, days=2, seed=5).events[0])
    dlq = f"{dep.prefix}events.dlq"
    source = dep.topic("email")
    letters = [
        # dead-lettered at the time (say, a schema the worker did not know yet); decodes now
        (good, "unknown_schema", 7),
        (good, "unknown_schema", 7),  # dead-lettered twice (a replay): replayed once
        (b"\x07garbage", "bad_magic", 8),
    ]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for value, reason, offset in letters:
        producer.produce(
            dlq,
            key=b"acme",
            value=value,
            headers=dead_letter_headers(
                reason=reason, detail="d", topic=source, partition=2, offset=offset, stage="decode"
            ),
        )
    producer.flush(30)

    listed = json.loads(dep.run("dlq", "list", "--format", "json").stdout)
    assert {(g["reason"], g["count"]) for g in listed} == {("unknown_schema", 2), ("bad_magic", 1)}
    assert "bad_magic" in dep.run("dlq", "list").stdout

    dry = json.loads(dep.run("dlq", "replay", "--dry-run", "--format", "json").stdout)
    assert dry["outcomes"] == {
        "would_replay": 1,
        "duplicate": 1,
        "still_failing:bad_magic": 1,
    }
    assert _read_all(kafka_bootstrap, source, dep.partitions) == []

    filtered = json.loads(
        dep.run("dlq", "replay", "--reason", "bad_magic", "--format", "json").stdout
    )
    assert filtered["outcomes"] == {"filtered_out": 2, "still_failing:bad_magic": 1}

    done = json.loads(dep.run("dlq", "replay", "--since", "1h", "--format", "json").stdout)
    assert done["outcomes"]["replayed"] == 1
    replayed = _read_all(kafka_bootstrap, source, dep.partitions)
    assert len(replayed) == 1
    assert replayed[0].value() == good and replayed[0].key() == b"acme"
    assert replayed[0].partition() == 2

    bad = dep.run("dlq", "replay", "--since", "last tuesday", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
