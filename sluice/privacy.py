"""A lead's erasure: the reference that names a lead, and the erasure registry topic.

An erasure is an event (``admin_lead_erasure_requested``, DESIGN §2); its durable effect
is one record in the registry topic (:attr:`topics.catalog.Catalog.erasures`), written by
the worker that consumed the event and read whole by every worker at start-up, then
followed while it runs. So an erasure reaches every partition whatever key the lead's
events travel under, and survives the loss of any worker's state: the registry, not the
state, is the durable copy. Backfill, ``sluice dlq replay`` and ``sluice privacy verify``
read it too. The whole story, for auditors: docs/erasure.md.

Why references, not lead ids
----------------------------
The registry is kept for good (an erasure must hold whatever is replayed later) and is
read by every worker, so it holds as little as can enforce the erasure: the tenant and
:func:`lead_ref`, a SHA-256 of tenant and lead. Whoever already knows a lead id can tell
whether it was erased (a suppression list cannot do less); nobody can list the erased
leads' ids from it. The OLAP purge matches rows on the same reference
(:data:`REF_SQL`), so the lead id is never spelled in a mutation or in ClickHouse's
query log either.

Record format (JSON keys and values, one partition, compacted, never tombstoned)::

    ["erasure", tenant, ref]                   {"event_id": ..., "requested_at": ms}
    ["outcome", destination, tenant, ref, at]  {"status": ..., "detail": ..., ...}

An outcome records what a destination answered to a deletion request Sluice made for the
lead (PostHog's person deletion, :mod:`sinks.posthog`), ``at`` naming the state that
asked (the partition).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("sluice.privacy")

ERASURE = "erasure"
OUTCOME = "outcome"

#: ClickHouse expression of :func:`lead_ref` over a row's ``company_id`` and ``lead_id``
#: (``{lead}``: the lead column), so queries and mutations never carry a lead id.
REF_SQL = "lower(substring(hex(SHA256(concat(company_id, '\\0', {lead}))), 1, 32))"


def lead_ref(tenant: str, lead: str) -> str:
    """The reference of one tenant's lead: 128 bits of SHA-256 of ``tenant NUL lead``."""
    return hashlib.sha256(f"{tenant}\x00{lead}".encode()).hexdigest()[:32]


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class Erasure:
    """One erased lead: the registry's record (no lead id, see the module docstring)."""

    tenant: str
    ref: str
    event_id: str
    requested_at: int  # epoch ms: when the erasure was requested (the event's time)

    def key(self) -> bytes:
        return _dumps([ERASURE, self.tenant, self.ref])

    def value(self) -> bytes:
        return _dumps({"event_id": self.event_id, "requested_at": self.requested_at})


@dataclass(frozen=True)
class Outcome:
    """What a destination answered to a deletion request made for an erased lead."""

    destination: str
    tenant: str
    ref: str
    scope: str  # who asked (e.g. "partition-3"): one outcome per asker
    status: str  # requested | nothing_to_delete | not_configured | refused | failed
    at: int  # epoch ms
    detail: dict[str, Any] = field(default_factory=dict)

    def key(self) -> bytes:
        return _dumps([OUTCOME, self.destination, self.tenant, self.ref, self.scope])

    def value(self) -> bytes:
        return _dumps({"status": self.status, "at": self.at, **self.detail})


def parse(key: bytes | None, value: bytes | None) -> Erasure | Outcome | None:
    """One registry record, or None for a record this version does not know."""
    if not key or value is None:
        return None
    try:
        k, v = json.loads(key), json.loads(value)
        if k[0] == ERASURE:
            return Erasure(str(k[1]), str(k[2]), str(v["event_id"]), int(v["requested_at"]))
        if k[0] == OUTCOME:
            detail = {n: x for n, x in v.items() if n not in ("status", "at")}
            return Outcome(
                str(k[1]), str(k[2]), str(k[3]), str(k[4]), str(v["status"]), int(v["at"]), detail
            )
    except (ValueError, KeyError, IndexError, TypeError):
        log.warning("ignoring a malformed erasure registry record")
    return None


class Registry:
    """The erased leads (and deletion outcomes) a process knows of: a grow-only set.

    Checking an event is cheap for the tenants that have no erasure (one dict lookup);
    for the others it costs one SHA-256 of the lead id.
    """

    def __init__(self, entries: Iterable[Erasure | Outcome] = ()) -> None:
        self._by_tenant: dict[str, dict[str, Erasure]] = {}
        self.outcomes: dict[tuple[str, str, str, str], Outcome] = {}
        for entry in entries:
            self.add(entry)

    def add(self, entry: Erasure | Outcome) -> bool:
        """Record one entry; True if it names a lead not erased before."""
        if isinstance(entry, Outcome):
            self.outcomes[(entry.destination, entry.tenant, entry.ref, entry.scope)] = entry
            return False
        refs = self._by_tenant.setdefault(entry.tenant, {})
        old = refs.get(entry.ref)
        # several requests for one lead: the first one is the erasure's date
        if old is None or (entry.requested_at, entry.event_id) < (old.requested_at, old.event_id):
            refs[entry.ref] = entry
        return old is None

    def erased(self, tenant: str, lead: str | None) -> bool:
        """Whether ``tenant``'s lead ``lead`` is erased (hot path: see the class doc)."""
        refs = self._by_tenant.get(tenant)
        return refs is not None and lead is not None and lead_ref(tenant, lead) in refs

    def erasing(self, tenant: str) -> bool:
        """Whether any lead of ``tenant`` is erased."""
        return tenant in self._by_tenant

    def has(self, tenant: str, ref: str) -> bool:
        refs = self._by_tenant.get(tenant)
        return refs is not None and ref in refs

    def get(self, tenant: str, ref: str) -> Erasure | None:
        return self._by_tenant.get(tenant, {}).get(ref)

    def refs(self, tenant: str) -> Mapping[str, Erasure]:
        """The references erased in one tenant."""
        return self._by_tenant.get(tenant, {})

    def tenants(self) -> Iterable[str]:
        return self._by_tenant.keys()

    def outcomes_of(self, tenant: str, ref: str) -> list[Outcome]:
        return [o for k, o in sorted(self.outcomes.items()) if k[1:3] == (tenant, ref)]

    def __iter__(self) -> Iterator[Erasure]:
        for refs in self._by_tenant.values():
            yield from refs.values()

    def __len__(self) -> int:
        return sum(len(refs) for refs in self._by_tenant.values())


# -- Kafka I/O ---------------------------------------------------------------------------


def read_registry(
    conf: dict[str, Any], topic: str, registry: Registry | None = None, timeout: float = 30.0
) -> tuple[Registry, int]:
    """Read the registry topic whole (up to its end now) into ``registry`` (new if None);
    return it and the offset to follow from. A missing topic reads as empty."""
    from sluice.kafka import ranges, read_ranges

    registry = registry if registry is not None else Registry()
    found = ranges(conf, [topic], timeout=timeout)
    for batch in read_ranges(conf, found, idle_timeout=timeout):
        for msg in batch:
            entry = parse(msg.key(), msg.value())
            if entry is not None:
                registry.add(entry)
    end = max((r.high for r in found), default=0)
    return registry, end


class RegistryWriter:
    """Produces registry records (idempotent producer, acks=all); :meth:`flush` raises
    unless every record written so far is acknowledged."""

    def __init__(self, conf: dict[str, Any], topic: str) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self._producer = Producer(
            {**conf, "enable.idempotence": True, "acks": "all", "linger.ms": 5}
        )
        self._errors: list[str] = []

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def write(self, entries: Iterable[Erasure | Outcome]) -> int:
        n = 0
        for entry in entries:
            self._producer.produce(
                self.topic, entry.value(), entry.key(), partition=0, on_delivery=self._delivered
            )
            n += 1
        self._producer.poll(0)
        return n

    def flush(self, timeout: float = 30.0) -> None:
        left = self._producer.flush(timeout)
        errors, self._errors = self._errors, []
        if left or errors:
            raise RuntimeError(
                f"erasure registry: {left} record(s) unacknowledged, {len(errors)} failed"
                + (f" ({errors[0]})" if errors else "")
            )


class RegistryFollower:
    """Reads the registry from an offset on, without a consumer group (every reader
    reads all of it); :meth:`poll` is blocking: call it from a thread."""

    def __init__(self, conf: dict[str, Any], topic: str, offset: int) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self._consumer = Consumer(
            {
                **conf,
                "group.id": "sluice-erasure-registry",  # never joins, never commits
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
            }
        )
        self._consumer.assign([TopicPartition(topic, 0, offset)])

    def poll(self, timeout: float = 1.0) -> list[Erasure | Outcome]:
        from sluice.kafka import PARTITION_EOF

        out: list[Erasure | Outcome] = []
        for msg in self._consumer.consume(500, timeout):
            error = msg.error()
            if error is not None:
                if error.code() != PARTITION_EOF:
                    log.warning("reading the erasure registry: %s", error)
                continue
            entry = parse(msg.key(), msg.value())
            if entry is not None:
                out.append(entry)
        return out

    def close(self) -> None:
        self._consumer.close()


def now_ms() -> int:
    return int(time.time() * 1000)


# -- verification (``sluice privacy verify``): pure classification of what a store holds --

#: What a finding means for the verdict.
GONE = "gone"  # nothing names the lead
HELD = "held"  # something Sluice controls still names it: the erasure is not complete
AWAITING = "awaiting"  # a copy Kafka removes by a known time (compaction, retention)
OVERDUE = "overdue"  # such a copy outlived its bound: something is wrong
KEPT = "kept"  # a compliance record, kept by law (the erasure's own audit row)
UNLINKABLE = "unlinkable"  # outside Sluice, pseudonymous under a destroyed secret
UNCHECKED = "unchecked"  # this store could not be read


@dataclass
class Finding:
    """One store's verdict on one lead."""

    store: str
    status: str
    detail: str
    count: int = 0
    until: int | None = None  # epoch ms: when a copy awaiting removal is gone at the latest

    @property
    def fails(self) -> bool:
        return self.status in (HELD, OVERDUE)


def names(value: Any, lead: str) -> bool:
    """Whether a JSON value holds the string ``lead`` anywhere (an exact element)."""
    if isinstance(value, str):
        return value == lead
    if isinstance(value, dict):
        return any(names(k, lead) or names(v, lead) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(names(v, lead) for v in value)
    return False


def changelog_tenant(key: list) -> tuple[str | None, str]:
    """(tenant, tag) of a changelog key (the engine's formats; None: no tenant)."""
    if not key or not isinstance(key[0], str):
        return None, ""
    if key[0].startswith("\x00"):
        tenant = key[1] if len(key) > 1 and isinstance(key[1], str) else None
        return (None if key[0] == "\x00pos" else tenant), key[0]
    return key[0], ""


@dataclass
class _Key:
    """One changelog key that named the lead at some point."""

    tag: str
    names: bool  # its latest record names the lead
    copies: int = 0  # superseded records naming the lead
    superseded_at: int | None = None  # ms: when the newest of those was superseded


@dataclass
class ChangelogScan:
    """Keys of one tenant whose records ever named the lead, as the scan goes."""

    tenant: str
    lead: str
    keys: dict[str, _Key] = field(default_factory=dict)

    def add(self, raw_key: str, key: list, value: Any, timestamp_ms: int) -> None:
        """One record, in the partition's order (``value`` None: a tombstone)."""
        tenant, tag = changelog_tenant(key)
        if tenant != self.tenant:
            return
        # a tombstone names nothing any more: its key goes after the tombstone retention
        hit = value is not None and (names(key, self.lead) or names(value, self.lead))
        entry = self.keys.get(raw_key)
        if entry is None:
            if hit:
                self.keys[raw_key] = _Key(tag, True)
            return
        if entry.names:  # the record it had is now a superseded copy
            entry.copies += 1
            entry.superseded_at = timestamp_ms
        entry.names = hit

    def findings(self, now: int, compaction_lag_ms: int, tombstone_ms: int) -> list[Finding]:
        """The verdict: latest values naming the lead are held (the erasure's audit
        entries are kept); superseded copies await compaction until the bound."""
        latest = [e for e in self.keys.values() if e.names]
        held = [e for e in latest if e.tag != "\x00audit"]
        audit = [e for e in latest if e.tag == "\x00audit"]
        copies = [e for e in self.keys.values() if e.copies]
        out = []
        if held:
            out.append(Finding("changelog", HELD, "latest values naming the lead", len(held)))
        if audit:
            detail = "audit entries of its erasure, not yet written"
            out.append(Finding("changelog", KEPT, detail, len(audit)))
        if copies:
            # compaction removes a superseded record within the lag of the record that
            # superseded it; a tombstone's key itself goes after the tombstone retention
            last = max(e.superseded_at or 0 for e in copies)
            until = last + compaction_lag_ms + tombstone_ms
            out.append(
                Finding(
                    "changelog",
                    OVERDUE if now > until else AWAITING,
                    "superseded copies naming the lead, awaiting compaction",
                    sum(e.copies for e in copies),
                    until,
                )
            )
        if not out:
            out.append(Finding("changelog", GONE, "no record names the lead"))
        return out
