"""Consumer lag of the worker's group, read from Kafka (no worker needed).

For each partition of the event topics: the group's committed offset (``-`` when the
group never committed there), the high watermark, and lag = high watermark − committed
(− low watermark when nothing was committed: what a new worker would read).
"""

from __future__ import annotations

from typing import Any


def group_lag(
    conf: dict[str, Any], group: str, topics: list[str], timeout: float = 15.0
) -> list[dict[str, Any]]:
    """One row per (topic, partition): committed, low, high, lag. Missing topics are skipped.

    Raises RuntimeError when Kafka does not answer.
    """
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**conf, "group.id": group, "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(timeout=timeout)
        tps = [
            TopicPartition(topic, p)
            for topic in topics
            if topic in metadata.topics and metadata.topics[topic].error is None
            for p in sorted(metadata.topics[topic].partitions)
        ]
        committed = consumer.committed(tps, timeout=timeout) if tps else []
        rows = []
        for tp in committed:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
            offset = tp.offset if tp.offset >= 0 else None
            rows.append(
                {
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "committed": offset,
                    "low": low,
                    "high": high,
                    "lag": max(0, high - (offset if offset is not None else low)),
                }
            )
        return rows
    finally:
        consumer.close()
