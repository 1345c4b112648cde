"""The topic catalog: every Kafka topic Sluice reads or writes, in one place.

No other module spells a topic name: producers, the worker, the CLI and the tests look
topics up here. The catalog is pure data built from three settings (topic prefix,
partition count, app id), so it imports nothing of Sluice's and is the same wherever it
is built: ``Catalog.from_settings(settings)``.

Partitioning: every event topic has the same partition count and is keyed per family
(:attr:`TopicSpec.key`, with the reason in :attr:`TopicSpec.key_reason`, both in
:data:`FAMILY_KEYS`); the producer SDK and ``sluice produce`` take the key from here, with
the Java-compatible murmur2 partitioner (:mod:`topics.partitioner`), so services in any
language agree.

Why two keys (DESIGN §2 "Partition key")
----------------------------------------
A partition's state is built from the events on it, so a family's key decides which
events must meet in one place. Email and warm-up attribution only needs *every event of
one email* together (the winning send and a bit per kind of event), so those families are
keyed by ``(tenant_id, email_id)``: one tenant's emails spread over every partition, and
the largest tenant no longer pins one worker (rollup rows are then computed per partition
and combined by the OLAP views, docs/olap.md). ``email_id`` is on every event of an email
(the schema's documented minimum), and it is the only field besides the tenant the key may
use: a field that can differ between events of one email (campaign, mailbox, lead) would
split it. The families whose state needs the whole tenant in one place keep ``tenant_id``;
each says why below. Changing a family's key moves its events to other partitions, so
state placed by the old key must move with it: ``sluice topics rekey``
(:mod:`streams.rekey`, docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from topics.partitioner import partition_for
from topics.taxonomy import FAMILIES

DAY_MS = 24 * 3600 * 1000
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

# The changelog's name is "<app id>-<STATE_TABLE>-changelog", the name Faust gave the
# changelog of the state table of the first releases (kept so existing changelogs restore).
STATE_TABLE = "email-state"

# How long a value superseded in a compacted topic (an erased lead's state, a destroyed
# per-lead key) may stay on the broker: the log cleaner must compact it within this lag
# (Kafka also rolls the active segment by then, at the next write), and a tombstone is
# dropped this long after its segment was cleaned. docs/erasure.md states the bound.
COMPACTION_LAG_MS = DAY_MS
TOMBSTONE_RETENTION_MS = DAY_MS
# The changelog keeps a tombstone (a deleted key) this long after compaction reached it;
# a worker's local state store older than the topic's delete.retention.ms is rebuilt from
# the whole changelog instead of reused: the tail after its marker may have lost the
# deletes since (streams/store.py). One day (erasures bound how long a superseded value
# lives): a store of a worker stopped for less than a day is reused.
CHANGELOG_DELETE_RETENTION_MS = TOMBSTONE_RETENTION_MS
# Kafka deletes a whole segment once its newest record is past retention: with a segment
# per day a record outlives its retention by at most a day (Kafka's default is a week), so
# an erased lead's raw events are gone 8 days after they were appended (dead letters: 31).
_DAILY_SEGMENTS = {"segment.ms": str(DAY_MS)}
_COMPACTED = {
    "cleanup.policy": "compact",
    "max.compaction.lag.ms": str(COMPACTION_LAG_MS),
    "delete.retention.ms": str(TOMBSTONE_RETENTION_MS),
}


class TopicSettings(Protocol):
    """The settings the catalog depends on (a :class:`sluice.settings.Settings` has them)."""

    @property
    def sluice_topic_prefix(self) -> str: ...

    @property
    def sluice_topic_partitions(self) -> int: ...

    @property
    def sluice_app_id(self) -> str: ...


@dataclass(frozen=True)
class TopicSpec:
    """One Kafka topic as Sluice wants it to exist."""

    name: str
    family: str | None
    partitions: int
    retention_ms: int | None
    #: event fields whose values make the record key (joined with NUL), in order
    key: tuple[str, ...] = ("tenant_id",)
    key_reason: str = ""
    schema: str | None = None
    dlq: str | None = None
    config: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    def topic_config(self) -> dict[str, str]:
        """Broker-side topic configuration for ``AdminClient.create_topics``."""
        retention = {} if self.retention_ms is None else {"retention.ms": str(self.retention_ms)}
        return {**retention, **self.config}

    def record_key(self, event: Mapping[str, Any]) -> bytes:
        """The Kafka record key of one event of this topic's family (its key fields joined
        with NUL; the worker compares every record's key with it, so it is kept cheap)."""
        key = self.key
        if len(key) == 2:
            return f"{event[key[0]]}\x00{event[key[1]]}".encode()
        if len(key) == 1:
            return str(event[key[0]]).encode()
        return "\x00".join([str(event[f]) for f in key]).encode()

    def partition_of(self, event: Mapping[str, Any]) -> int:
        """The partition the catalog's key puts ``event`` on (murmur2, like every producer)."""
        return partition_for(self.record_key(event), self.partitions)

    def home(self, event: Mapping[str, Any], partition: int, key: bytes | None) -> int:
        """The partition whose state owns ``event``, read at ``partition`` with record key
        ``key``: that partition when the record carries the catalog's key (its producer's
        murmur2 put it there: no hash on the hot path), else the catalog key's partition (a
        record produced with another key — before a re-key, or a replayed dead letter —
        belongs where its key's state is now)."""
        if key is not None and key == self.record_key(event):
            return partition
        return self.partition_of(event)


@dataclass(frozen=True)
class FamilyKey:
    """A family's record key and why (the state that needs its events together)."""

    fields: tuple[str, ...]
    reason: str


#: The partition key of every event family, with the reason (README and docs/operations.md
#: show this table; ``sluice topics list`` prints it).
FAMILY_KEYS: Mapping[str, FamilyKey] = {
    "email": FamilyKey(
        ("tenant_id", "email_id"),
        "attribution merges the events of one email (its winning send and a bit per kind of "
        "event); every event of an email carries email_id, so one email stays on one "
        "partition while a tenant's emails spread over all of them; the rollup rows are "
        "per partition and the OLAP views combine them",
    ),
    "warmup": FamilyKey(
        ("tenant_id", "email_id"),
        "warm-up attribution merges the events of one warm-up email (send, first landing, "
        "reply), like email",
    ),
    "business": FamilyKey(
        ("tenant_id",),
        "plan changes: the plan at a month's end is the tenant's last business event before "
        "it, so every business event of a tenant is merged on one partition",
    ),
    "admin_action": FamilyKey(
        ("tenant_id",),
        "the audit hash chain: one gapless sequence per tenant, numbered in partition order, "
        "so every compliance action of a tenant on one partition, in order",
    ),
    "infra": FamilyKey(
        ("tenant_id",),
        "incident coalescing: a tenant's infra_alert storms (per incident_key, or per alert "
        "rule and service split by 30-minute gaps) are merged on one partition",
    ),
    "system": FamilyKey(
        ("tenant_id",),
        "one admin_system_events row per event (any key would be exact); keyed like infra so "
        "a tenant's incidents stay in order beside their alerts; little volume",
    ),
    "security": FamilyKey(
        ("tenant_id",),
        "sensitive-access rows are one per event (any key would be exact); the SIEM reads a "
        "tenant's logins and data access in order (a failed-then-succeeded login is one "
        "story); little volume",
    ),
    "admin_ui": FamilyKey(
        ("tenant_id",),
        "no state (PostHog only; any key would be exact); a tenant's admin sessions stay in "
        "order; little volume",
    ),
}


@dataclass(frozen=True)
class Catalog:
    """Every topic of one deployment (prefix, partitions and app id fixed)."""

    prefix: str = ""
    partitions: int = 4
    app_id: str = "sluice"

    @classmethod
    def from_settings(cls, settings: TopicSettings) -> Catalog:
        return cls(
            settings.sluice_topic_prefix, settings.sluice_topic_partitions, settings.sluice_app_id
        )

    def _name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def dlq(self) -> TopicSpec:
        """The dead-letter topic (record format: :mod:`topics.dead_letters`)."""
        return TopicSpec(
            name=self._name("events.dlq"),
            family=None,
            partitions=1,
            # Dead letters are kept a month: time to notice, fix and replay them.
            retention_ms=30 * DAY_MS,
            key=(),
            key_reason="the source record's key, unchanged",
            config={"max.message.bytes": str(MAX_MESSAGE_BYTES), **_DAILY_SEGMENTS},
            description="dead letters: raw bytes + headers sluice.reason, sluice.source.*",
        )

    @property
    def changelog(self) -> TopicSpec:
        """The worker's state changelog: compacted, one partition per event partition.

        What the local state stores rely on (streams/store.py): ``cleanup.policy=compact``
        only (no time or size retention: a partition rebuilt from its first offset must
        find every key), and tombstones kept ``delete.retention.ms`` (see
        :data:`CHANGELOG_DELETE_RETENTION_MS`). The worker creates it like this when it is
        missing.
        """
        return TopicSpec(
            name=f"{self.app_id}-{STATE_TABLE}-changelog",
            family=None,
            partitions=self.partitions,
            retention_ms=None,  # compacted: the last value of every key is kept for good
            key=(),
            key_reason=(
                "state key (JSON), on the partition whose events made it: where its "
                "family's key puts them (sluice topics rekey moves it when a key changes)"
            ),
            config={**_COMPACTED, "max.message.bytes": str(MAX_MESSAGE_BYTES)},
            description="the worker's state, compacted (restored after a restart or rebalance)",
        )

    @property
    def erasures(self) -> TopicSpec:
        """The erasure registry: one record per erased lead, never deleted (docs/erasure.md).

        Every worker reads it whole at start-up and follows it while running (like a
        Kafka Streams GlobalKTable), so an erasure reaches every partition whatever the
        key of the lead's events; it is the durable copy, and survives any loss of the
        workers' state. It also records what each destination answered to a deletion
        request. Keys hold a SHA-256 reference of tenant and lead, never the lead id.
        """
        return TopicSpec(
            name=self._name("privacy.erasures"),
            family=None,
            partitions=1,
            retention_ms=None,  # compacted, and never tombstoned: an erasure holds for good
            key=(),
            key_reason="[kind, tenant, lead reference, ...] (JSON): one record per erased lead "
            "and per deletion outcome; one partition, so every reader sees one order",
            config=dict(_COMPACTED),
            description="erased leads (read whole by every worker) and deletion outcomes",
        )

    def event_topics(self) -> list[TopicSpec]:
        """Every topic that carries events, one per family of the taxonomy."""
        return [self.for_family(family) for family in FAMILIES]

    def for_family(self, family: str) -> TopicSpec:
        """The topic that carries one event family."""
        if family not in FAMILIES:
            raise KeyError(f"{family!r} is not an event family")
        return TopicSpec(
            name=self._name(f"events.{family}"),
            family=family,
            partitions=self.partitions,
            # Seven days: long enough for `sluice backfill` and for replays after an outage.
            retention_ms=7 * DAY_MS,
            key=FAMILY_KEYS[family].fields,
            key_reason=FAMILY_KEYS[family].reason,
            config={"max.message.bytes": str(MAX_MESSAGE_BYTES), **_DAILY_SEGMENTS},
            schema=f"avro_schemas/{family}",
            dlq=self._name("events.dlq"),
            description=f"{family} events, Avro",
        )

    def families(self) -> dict[str, str]:
        """Event topic name -> family."""
        return {spec.name: spec.family for spec in self.event_topics() if spec.family}

    def __iter__(self) -> Iterator[TopicSpec]:
        """Every topic: the event topics, the dead letters, the changelog, the erasures."""
        yield from self.event_topics()
        yield self.dlq
        yield self.changelog
        yield self.erasures
