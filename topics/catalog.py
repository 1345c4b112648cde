"""The topic catalog (name, partitions, retention, key, schema, dead-letter topic).

No other module spells a topic name: producers, the worker and the admin commands all
look topics up here. Every event topic has the same partition count and is keyed by
``tenant_id``, so partition *p* of every topic holds the same tenants and the worker
that owns *p* owns all of those tenants' rollup state (Faust co-partitioning).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from sluice.settings import get_settings
from sluice.taxonomy import FAMILIES

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """One Kafka topic as Sluice wants it to exist."""

    name: str
    family: str | None
    partitions: int
    retention_ms: int
    key: str = "tenant_id"
    schema: str | None = None
    dlq: str | None = None
    config: dict[str, str] = field(default_factory=dict)
    description: str = ""

    def topic_config(self) -> dict[str, str]:
        """Broker-side topic configuration for AdminClient.create_topics."""
        return {"retention.ms": str(self.retention_ms), **self.config}


def _name(base: str) -> str:
    return f"{get_settings().sluice_topic_prefix}{base}"


def build_catalog() -> dict[str, TopicSpec]:
    """Build the catalog from settings (partitions, prefix)."""
    settings = get_settings()
    partitions = settings.sluice_topic_partitions
    dlq = _name("events.dlq")
    catalog: dict[str, TopicSpec] = {}
    for family in FAMILIES:
        spec = TopicSpec(
            name=_name(f"events.{family}"),
            family=family,
            partitions=partitions,
            # Seven days: long enough for `sluice backfill` and for replays after an outage.
            retention_ms=7 * DAY_MS,
            config={"max.message.bytes": str(16 * 1024 * 1024)},
            schema=f"avro_schemas/{family}",
            dlq=dlq,
            description=f"{family} events, Avro, keyed by tenant_id",
        )
        catalog[family] = spec
    catalog["dlq"] = TopicSpec(
        name=dlq,
        family=None,
        partitions=1,
        # Dead letters are kept a month: time to notice, fix and replay them.
        retention_ms=30 * DAY_MS,
        config={"max.message.bytes": str(16 * 1024 * 1024)},
        key="source key (tenant_id when known)",
        schema=None,
        dlq=None,
        description="dead letters: raw bytes + headers sluice.reason, sluice.source.*",
    )
    return catalog


@lru_cache(maxsize=1)
def catalog() -> dict[str, TopicSpec]:
    """The catalog as configured (cached; ``catalog.cache_clear()`` after changing settings)."""
    return build_catalog()


def topic_for_family(family: str) -> TopicSpec:
    """Return the topic that carries one event family."""
    return catalog()[family]


def event_topics() -> list[TopicSpec]:
    """Every topic that carries events (all but the dead-letter topic)."""
    return [spec for spec in catalog().values() if spec.family is not None]


def dlq_topic() -> TopicSpec:
    """The dead-letter topic."""
    return catalog()["dlq"]
