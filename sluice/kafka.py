"""Kafka plumbing every Sluice client shares: configuration from settings, and reading
a topic's partitions up to the end they had when reading began.

* :func:`kafka_config` — the librdkafka (confluent-kafka) part of every Producer,
  Consumer and AdminClient configuration: the producer SDK, the CLI, status, DLQ tools,
  the worker's reader. :func:`kafka_ssl_context` is the same for aiokafka (Faust).
* :func:`ranges` and :func:`read_ranges` — "read these partitions from here to their
  current end" in batches, without a consumer group (dead letters, backfill, the worker's
  state restore use it); :func:`group_lag` — the worker group's lag.

Hostname verification is on unless ``KAFKA_SSL_CHECK_HOSTNAME=false`` (refused by the
production profile). Secrets are read from ``SecretStr`` only here, at the moment a
client is built, and never logged.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from confluent_kafka import Message

    from sluice.settings import Settings

# librdkafka's end-of-partition event (KafkaError._PARTITION_EOF, a documented constant
# that happens to start with an underscore).
PARTITION_EOF = -191


def kafka_config(settings: Settings) -> dict[str, Any]:
    """librdkafka settings (bootstrap servers + security) for any confluent-kafka client."""
    s = settings
    conf: dict[str, Any] = {
        "bootstrap.servers": s.kafka_bootstrap_servers,
        "security.protocol": s.kafka_security_protocol.lower(),
    }
    if s.kafka_security_protocol in {"SSL", "SASL_SSL"}:
        conf["ssl.endpoint.identification.algorithm"] = (
            "https" if s.kafka_ssl_check_hostname else "none"
        )
        if s.kafka_ssl_ca_file:
            conf["ssl.ca.location"] = s.kafka_ssl_ca_file
        if s.kafka_ssl_cert_file:
            conf["ssl.certificate.location"] = s.kafka_ssl_cert_file
            conf["ssl.key.location"] = s.kafka_ssl_key_file
            if s.kafka_ssl_key_password is not None:
                conf["ssl.key.password"] = s.kafka_ssl_key_password.get_secret_value()
    if s.kafka_security_protocol == "SASL_SSL":
        conf["sasl.mechanism"] = s.kafka_sasl_mechanism
        conf["sasl.username"] = s.kafka_sasl_username
        conf["sasl.password"] = (
            s.kafka_sasl_password.get_secret_value() if s.kafka_sasl_password else ""
        )
    return conf


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext:
    """The TLS context for aiokafka: CA, optional client cert (mTLS), hostname check."""
    s = settings
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=s.kafka_ssl_ca_file)
    context.check_hostname = s.kafka_ssl_check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if s.kafka_ssl_cert_file:
        context.load_cert_chain(
            s.kafka_ssl_cert_file,
            s.kafka_ssl_key_file,
            password=(
                s.kafka_ssl_key_password.get_secret_value() if s.kafka_ssl_key_password else None
            ),
        )
    return context


@dataclass(frozen=True)
class Range:
    """Offsets ``[low, high)`` of one topic-partition to read."""

    topic: str
    partition: int
    low: int
    high: int


def ranges(
    conf: dict[str, Any], topics: Iterable[str], timeout: float = 15.0, missing_ok: bool = True
) -> list[Range]:
    """The non-empty partitions of ``topics``, from their first retained offset to their
    current end. Raises RuntimeError when Kafka does not answer (or, unless
    ``missing_ok``, when a topic is missing)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**conf, "group.id": "sluice-reader", "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(timeout=timeout)
        found = []
        for topic in topics:
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                if missing_ok:
                    continue
                raise RuntimeError(f"topic {topic} does not exist (run `sluice topics create`)")
            for p in sorted(meta.partitions):
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=timeout
                )
                if high > low:
                    found.append(Range(topic, p, low, high))
        return found
    finally:
        consumer.close()


def read_ranges(
    conf: dict[str, Any],
    wanted: Iterable[Range],
    *,
    batch: int = 5_000,
    idle_timeout: float = 30.0,
) -> Iterator[list[Message]]:
    """Every record of ``wanted``, in batches of up to ``batch``, each range up to its
    ``high`` (records appended meanwhile are not read). No consumer group joins and
    nothing is committed. Raises RuntimeError on a read error or when no record comes for
    ``idle_timeout`` seconds before every range is done."""
    from confluent_kafka import Consumer, TopicPartition

    todo = {(r.topic, r.partition): r for r in wanted if r.high > r.low}
    if not todo:
        return
    consumer = Consumer(
        {
            **conf,
            "group.id": "sluice-reader",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
        }
    )
    try:
        consumer.assign([TopicPartition(t, p, r.low) for (t, p), r in todo.items()])
        idle_since = time.monotonic()
        while todo:
            messages = consumer.consume(num_messages=batch, timeout=0.5)
            out = []
            for msg in messages:
                error = msg.error()
                if error is not None:
                    if error.code() == PARTITION_EOF:
                        continue
                    raise RuntimeError(f"reading {msg.topic()}: {error.str()}")
                where = (msg.topic(), msg.partition())
                r = todo.get(where)  # type: ignore[arg-type]
                if r is None or msg.offset() >= r.high:  # type: ignore[operator]
                    continue
                out.append(msg)
                if msg.offset() + 1 >= r.high:  # type: ignore[operator]
                    del todo[where]  # type: ignore[arg-type]
            if out:
                idle_since = time.monotonic()
                yield out
            elif time.monotonic() - idle_since > idle_timeout:
                left = ", ".join(f"{t}[{p}]" for t, p in sorted(todo))
                raise RuntimeError(f"no records for {idle_timeout:.0f}s before the end of {left}")
    finally:
        consumer.close()


def create_missing(conf: dict[str, Any], specs: Iterable[Any], timeout: float = 30.0) -> list[str]:
    """Create the topics of ``specs`` (:class:`topics.catalog.TopicSpec`) that do not
    exist yet, as ``sluice topics create`` would; return their names."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(conf)
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(
            s.name, num_partitions=s.partitions, replication_factor=-1, config=s.topic_config()
        )
        for s in specs
        if s.name not in existing
    ]
    created = []
    for name, future in (
        admin.create_topics(wanted, request_timeout=timeout).items() if wanted else []
    ):
        try:
            future.result()
            created.append(name)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    return created


def group_lag(
    conf: dict[str, Any], group: str, topics: list[str], timeout: float = 15.0
) -> list[dict[str, Any]]:
    """Consumer lag of ``group``: one row per (topic, partition) with the committed offset
    (None when the group never committed there), low, high and lag = high - committed
    (- low when nothing was committed: what a new worker would read). Missing topics are
    skipped; raises RuntimeError when Kafka does not answer."""
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
