"""The producer SDK services use to emit taxonomy events (confluent-kafka, Avro).

Guarantees: idempotent producer with ``acks=all`` (no duplicates from producer retries,
no loss once acknowledged), keyed as the topic catalog says for the event's family
(:attr:`topics.catalog.TopicSpec.key`) with the Java-compatible murmur2 partitioner (so
services in any language put a key on the same partition), every event validated
against its schema *before* it is queued. Delivery errors are never
swallowed: :meth:`EventProducer.flush` raises :class:`DeliveryError` listing them.

    with EventProducer() as producer:
        producer.send({"event_type": "email_sent", "tenant_id": "acme", ...})
    # leaving the block flushes and raises if anything was not delivered
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from avro_schemas.codec import Codec, ValidationError
from sluice.kafka import kafka_config
from sluice.settings import Settings, get_settings
from topics.catalog import Catalog
from topics.taxonomy import family_of


class DeliveryError(RuntimeError):
    """Some events were not acknowledged by Kafka."""

    def __init__(self, failures: list[tuple[str, str]]) -> None:
        self.failures = failures
        sample = "; ".join(f"{eid}: {err}" for eid, err in failures[:5])
        super().__init__(f"{len(failures)} event(s) not delivered: {sample}")


@dataclass(frozen=True)
class Encoded:
    """One validated, encoded event, ready to produce."""

    topic: str
    key: bytes
    value: bytes
    event_id: str


@dataclass
class ProduceStats:
    queued: int = 0
    delivered: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """librdkafka configuration for event producers (security from settings)."""
    return {
        **kafka_config(settings),
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 20,
        "compression.type": "lz4",
        "message.max.bytes": 16 * 1024 * 1024,
        "delivery.timeout.ms": 120_000,
        **overrides,
    }


class EventProducer:
    """Validate, encode and produce taxonomy events."""

    def __init__(
        self,
        settings: Settings | None = None,
        codec: Codec | None = None,
        **config_overrides: Any,
    ) -> None:
        self.settings = settings or get_settings()
        self.codec = codec or Codec(settings=self.settings)
        self.catalog = Catalog.from_settings(self.settings)
        self._client_error: str | None = None
        self._producer = Producer(
            producer_config(self.settings, **{"error_cb": self._on_error, **config_overrides})
        )
        self.stats = ProduceStats()

    def _on_error(self, err: KafkaError) -> None:
        # Authentication / TLS failures never heal by waiting: fail the flush at once.
        if err.fatal() or err.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL):  # noqa: SLF001
            self._client_error = err.str()

    def encode(self, event: Mapping[str, Any]) -> Encoded:
        """Validate and encode one event (a missing ``event_id`` gets a new UUID).

        Raises :class:`avro_schemas.codec.ValidationError` for an invalid event.
        """
        event = dict(event)
        event.setdefault("event_id", str(uuid.uuid4()))
        family = family_of(str(event.get("event_type", "")))
        if family is None:
            raise ValidationError(f"event_type {event.get('event_type')!r} is not in the taxonomy")
        spec = self.catalog.for_family(family)
        value = self.codec.encode(family, event)
        return Encoded(spec.name, spec.record_key(event), value, str(event["event_id"]))

    def send(self, event: Mapping[str, Any]) -> str:
        """Validate and queue one event; return its event_id (see :meth:`encode`)."""
        encoded = self.encode(event)
        self.send_encoded(encoded)
        return encoded.event_id

    def send_encoded(self, encoded: Encoded) -> None:
        """Queue an event :meth:`encode` made."""
        self._produce(encoded.topic, encoded.key, encoded.value, encoded.event_id)

    def send_raw(self, family: str, key: str, value: bytes, label: str = "") -> None:
        """Queue already-encoded bytes (tests use this to inject poison records)."""
        self._produce(self.catalog.for_family(family).name, key.encode(), value, label)

    def _produce(self, topic: str, key: bytes, value: bytes, label: str) -> None:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                self.stats.delivered += 1
            else:
                self.stats.failures.append((label or f"{topic}:{key!r}", err.str()))

        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                self._producer.poll(0.1)  # local queue full: serve callbacks, then retry
        self.stats.queued += 1
        self._producer.poll(0)

    def flush(self, timeout: float = 60.0) -> ProduceStats:
        """Wait for every queued event; raise DeliveryError if any was not delivered."""
        import time

        deadline = time.monotonic() + timeout
        remaining = self._producer.flush(0)
        while remaining and self._client_error is None and time.monotonic() < deadline:
            remaining = self._producer.flush(min(0.5, max(0.0, deadline - time.monotonic())))
        if remaining and self._client_error is not None:
            self.stats.failures.append(
                ("*", f"{remaining} event(s) not sent: {self._client_error}")
            )
        elif remaining:
            self.stats.failures.append(("*", f"{remaining} event(s) still queued after {timeout}s"))
        if self.stats.failures:
            raise DeliveryError(self.stats.failures)
        return self.stats

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.flush()
        else:
            self._producer.flush(10)
