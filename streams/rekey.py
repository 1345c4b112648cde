"""Where state belongs, and moving it there: ``sluice topics rekey`` and the worker's check.

A partition's state is built from the events on it, so a state entry belongs on the
partition its family's key (``topics.catalog.FAMILY_KEYS``) puts that family's events:
an email's attribution record on the partition of ``(tenant_id, email_id)``. When a key
changes (the tenant-keyed releases before email-keyed email and warm-up topics), new
events of an email go to a new partition while its state is still on the old one, and the
two would count the email twice. So before the workers start under new keys:

1. **move** (``sluice topics rekey``): every email and warm-up state entry of the
   changelog whose home under the catalog is another partition is produced to that
   partition (its value unchanged but for the partition it names), and, once that is
   acknowledged, a tombstone is left where it was. The last record of a key decides (a
   key tombstoned earlier — moved, or erased — is not resurrected). Components keyed by
   tenant (plan changes, the audit chain, sensitive access, incidents) and the offsets
   applied stay where they are. Idempotent and resumable: a crash between a move and its
   tombstone leaves the entry on both partitions; the next run moves it again (a join: no
   change) and tombstones it. The workers read a tombstone as "forget this entry"
   (:meth:`streams.engine.Engine.join`).
2. **rows**: the analytics tables are rewritten from the moved state, partition by
   partition, exactly as a worker restoring it would write them (the same engine, the
   same versions: the partition's offsets); a row the OLAP holds for a partition whose
   state no longer counts anything there (its emails moved away) is superseded by a zero
   row of that partition's version, so no old row is counted twice. Migration 5 (which
   added the ``shard`` column) emptied the tables written under the old layout.

Records still in the event topics with an old key are not a problem: the worker forwards
a record whose key is not the catalog's to its home partition (:mod:`streams.engine`).

The worker checks at every restore that a sample of its attribution state is on its home
partition (:func:`misplaced`) and refuses to run otherwise: state placed by tenant keys
would be split by the new ones.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from sluice.olap.catalog import OLAP_TABLES
from streams.engine import Engine, default_components
from streams.rollups import AttributionRollups
from topics.catalog import Catalog

log = logging.getLogger("sluice.rekey")

#: attribution states sampled per partition by the worker's check at restore
SAMPLE = 256
#: the tables whose rows are per partition (rewritten after a move)
SHARDED_TABLES = tuple(name for name, t in OLAP_TABLES.items() if t.sharded)
CHUNK_ROWS = 10_000

Write = Callable[[str, list[str], list[list]], None]


class RekeyError(RuntimeError):
    """A re-key that cannot run (workers still running, Kafka or ClickHouse unreachable)."""


@dataclass(frozen=True)
class Placement:
    """Which changelog entries follow a key other than the tenant, and where they belong."""

    catalog: Catalog
    #: changelog tag -> (family, the event field the key's second part is)
    movable: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, catalog: Catalog) -> Placement:
        movable = {}
        components = default_components()
        for c in components:
            if isinstance(c, AttributionRollups):
                (family,) = c.families
                movable[c.tag] = (family, c.attribution.id_field)
            c.close()
        return cls(catalog, movable)

    def home_of(self, tag: str, parts: Sequence[Any]) -> int | None:
        """The home partition of an attribution state ``(tenant, message id)`` of ``tag``."""
        family, id_field = self.movable[tag]
        event = {"tenant_id": parts[0], id_field: parts[1]}
        return self.catalog.for_family(family).partition_of(event)

    def home(self, key: str) -> int | None:
        """The partition a changelog entry (its engine key) belongs on; None: wherever the
        events that made it were (it follows the tenant, whose key did not change)."""
        parsed = json.loads(key)
        head = parsed[0]
        if isinstance(head, str) and head.startswith("\x00"):
            return self.home_of(head, parsed[1:]) if head in self.movable else None
        return self.home_of("", parsed) if "" in self.movable else None


def misplaced(
    engine: Engine, partitions: Iterable[int], placement: Placement, sample: int = SAMPLE
) -> dict[int, tuple[int, int]]:
    """Partitions whose attribution state is not where the catalog puts it: partition ->
    (entries off their home, entries looked at), for the first ``sample`` of each kind."""
    out: dict[int, tuple[int, int]] = {}
    for partition in partitions:
        ps = engine.partitions.get(partition)
        if ps is None:
            continue
        off = seen = 0
        for component in ps.components:
            if not isinstance(component, AttributionRollups):
                continue
            for key in itertools.islice(iter(component.states), sample):
                seen += 1
                off += placement.home_of(component.tag, key) != partition
        if off:
            out[partition] = (off, seen)
    return out


# -- the tool ------------------------------------------------------------------------------


@dataclass
class PartitionReport:
    """What the re-key did to one changelog partition."""

    partition: int
    records: int = 0  # changelog records read (first pass)
    moved_out: int = 0  # entries produced to their home, then tombstoned here
    moved_in: int = 0  # entries other partitions moved here
    rows: dict[str, int] = field(default_factory=dict)  # rows written per table
    superseded: dict[str, int] = field(default_factory=dict)  # zero rows over stale ones


@dataclass
class Report:
    partitions: list[PartitionReport] = field(default_factory=list)

    def total(self, attr: str) -> int:
        return sum(getattr(p, attr) for p in self.partitions)


def check_idle(
    conf: dict[str, Any], group: str, timeout: float = 15.0, wait_s: float = 0.0
) -> None:
    """Refuse while the worker group has members: a running worker would write state
    placed by the old key again. A stopped worker with static membership
    (``SLUICE_INSTANCE_ID``) stays a member until its session times out: wait up to
    ``wait_s`` for the group to empty (give it ``KAFKA_SESSION_TIMEOUT_S`` and a little)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(conf)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            (future,) = admin.describe_consumer_groups([group], request_timeout=timeout).values()
            description = future.result()
        except Exception as exc:  # a group never formed is fine; anything else is not
            if "GROUP_ID_NOT_FOUND" in str(exc):
                return
            raise RekeyError(f"cannot describe the worker group {group!r}: {exc}") from None
        members = description.members
        if not members:
            return
        static = sum(1 for m in members if m.group_instance_id)
        # a dynamic member is a running worker: refuse at once; static ones may be stopped
        if static < len(members) or time.monotonic() >= deadline:
            hint = (
                f" ({static} static: a stopped worker with SLUICE_INSTANCE_ID stays a member "
                "until its session times out)"
                if static
                else ""
            )
            raise RekeyError(
                f"the worker group {group!r} has {len(members)} member(s){hint}: stop every "
                "worker first (SIGTERM drains and commits), then run the re-key"
            )
        time.sleep(1.0)


def _changelog_ranges(conf: dict[str, Any], topic: str) -> dict[int, Any]:
    from sluice.kafka import ranges

    try:
        return {r.partition: r for r in ranges(conf, [topic], missing_ok=True)}
    except RuntimeError as exc:
        raise RekeyError(f"cannot read the changelog {topic}: {exc}") from None


Record = tuple[int, bytes | None, bytes | None]  # (offset, raw key, raw value) of the changelog


def off_home(records: Iterable[Record], partition: int, placement: Placement) -> dict:
    """Pass 1 over one changelog partition, in offset order: its live entries whose home is
    another partition, raw key -> (offset of the key's last record, home). The last record
    decides: a tombstone means the entry is gone (moved earlier, or erased)."""
    off: dict[bytes, tuple[int, int]] = {}
    for offset, raw, value in records:
        if raw is None:
            continue
        if value is None:
            off.pop(raw, None)
            continue
        home = placement.home(orjson.loads(raw))
        if home is not None and home != partition:
            off[raw] = (offset, home)
        else:
            off.pop(raw, None)
    return off


Produce = Callable[[bytes | None, bytes, int], None]  # (value, raw key, partition)


def move(
    records: Iterable[Record],
    off: Mapping[bytes, tuple[int, int]],
    partition: int,
    produce: Produce,
    flush: Callable[[], None],
) -> dict[int, int]:
    """Pass 2 over one changelog partition: produce the last value of each entry in
    ``off`` to its home, flush (every move acknowledged), then tombstone each of them
    here and flush. Return home -> entries moved there."""
    if not off:
        return {}
    moved: dict[int, int] = {}
    for offset, raw, value in records:
        entry = off.get(raw) if raw is not None else None
        if entry is None or entry[0] != offset or value is None:
            continue
        home = entry[1]
        parsed = orjson.loads(value)
        parsed[0] = home  # a value names its partition (the engine restores it there)
        produce(orjson.dumps(parsed), raw, home)  # type: ignore[arg-type]
        moved[home] = moved.get(home, 0) + 1
    flush()
    for raw in off:
        produce(None, raw, partition)
    flush()
    return moved


def restore(records: Iterable[Record], partition: int, engine: Engine) -> None:
    """Join one changelog partition into ``engine`` as a worker's restore would."""
    batch: list[tuple[str, list | None]] = []
    for _, raw, value in records:
        if raw is None:
            continue
        batch.append((orjson.loads(raw), None if value is None else orjson.loads(value)))
        if len(batch) >= 5_000:
            engine.join(batch, partition)
            batch = []
    engine.join(batch, partition)
    if partition in engine.partitions:
        engine.restored([partition])


def rows(
    engine: Engine,
    partition: int,
    existing: Callable[[str, int], Iterable[tuple]],
    write: Write,
    report: PartitionReport,
    now: datetime | None = None,
) -> None:
    """Write every row of the sharded tables ``partition``'s state holds, and a zero row
    (its version) over each row ``existing(table, partition)`` lists that it does not."""
    now = now or datetime.now(tz=UTC)
    written: dict[str, set[tuple]] = {t: set() for t in SHARDED_TABLES}
    while True:
        ckpt = engine.snapshot(now=now)
        batch = {t: r for t, r in ckpt.rows.items() if t in written}
        if not batch:
            break
        for table, table_rows in batch.items():
            width = len(engine.layouts[table].key_columns)
            written[table].update(tuple(r[:width]) for r in table_rows)
            _write(write, table, engine.columns(table), table_rows)
            report.rows[table] = report.rows.get(table, 0) + len(table_rows)
    # every row a partition ever wrote has a version <= its offsets now (the changelog is
    # written before the rows), and of equal versions the later insert wins
    ps = engine.state(partition)
    version = ps.version()
    for table in SHARDED_TABLES:
        stale = [tuple(k) for k in existing(table, partition) if tuple(k) not in written[table]]
        if not stale:
            continue
        layout = engine.layouts[table]
        zeros = []
        for key in stale:
            values: list[Any] = []
            for tag, _ in layout.parts:
                values.extend(ps.by_tag[tag].value(table, key))  # counts nothing: zeros
            zeros.append([*key, partition, *values, now, version])
        _write(write, table, engine.columns(table), zeros)
        report.superseded[table] = len(zeros)


def _write(write: Write, table: str, columns: list[str], table_rows: list[list]) -> None:
    for i in range(0, len(table_rows), CHUNK_ROWS):
        write(table, columns, table_rows[i : i + CHUNK_ROWS])


def _records(conf: dict[str, Any], wanted: Any, on_progress: Callable[[int], None]):  # noqa: ANN202
    from sluice.kafka import read_ranges

    for batch in read_ranges(conf, [wanted], batch=5_000):
        for msg in batch:
            yield int(msg.offset()), msg.key(), msg.value()
        on_progress(len(batch))


class _Producer:
    """The changelog producer of a re-key (:class:`streams.fetch.AckedProducer`): every
    error kept, a flush that does not deliver everything fails the re-key."""

    def __init__(self, conf: dict[str, Any], topic: str) -> None:
        from streams.fetch import AckedProducer

        self.topic = topic
        self.acked = AckedProducer(conf, "sluice.rekey.librdkafka", {})

    def produce(self, value: bytes | None, key: bytes, partition: int) -> None:
        self.acked.send(self.topic, value, key, partition)

    def flush(self) -> None:
        try:
            self.acked.flushed(f"writing {self.topic}", 120)
        except RuntimeError as exc:
            raise RekeyError(str(exc)) from None


def run(
    conf: dict[str, Any],
    catalog: Catalog,
    *,
    write: Write | None,
    existing: Callable[[str, int], Iterable[tuple]] = lambda table, partition: (),
    engine_factory: Callable[[], Engine] = Engine,
    on_progress: Callable[[str, int], None] = lambda step, n: None,
) -> Report:
    """The whole re-key (see the module docstring); ``write`` None: a dry run (count what
    would move, write nothing)."""
    placement = Placement.of(catalog)
    topic = catalog.changelog.name
    found = _changelog_ranges(conf, topic)
    report = Report([PartitionReport(p) for p in range(catalog.partitions)])
    by_partition = {p.partition: p for p in report.partitions}
    producer = _Producer(conf, topic)

    def part(partition: int) -> PartitionReport:
        if partition not in by_partition:
            by_partition[partition] = PartitionReport(partition)
            report.partitions.append(by_partition[partition])
        return by_partition[partition]

    for partition, wanted in sorted(found.items()):
        this = part(partition)
        counted = [0]

        def scanned(n: int, counted: list[int] = counted) -> None:
            counted[0] += n
            on_progress("scan", n)

        off = off_home(_records(conf, wanted, scanned), partition, placement)
        this.records, this.moved_out = counted[0], len(off)
        if write is None:
            for _, home in off.values():
                part(home).moved_in += 1
            continue
        records = _records(conf, wanted, lambda n: on_progress("move", n))
        for home, n in move(records, off, partition, producer.produce, producer.flush).items():
            part(home).moved_in += n
        log.info("changelog partition %d: %d entries moved to their home", partition, len(off))
    if write is None:
        return report
    found = _changelog_ranges(conf, topic)  # now with the moves and tombstones
    for partition in sorted(by_partition):
        engine = engine_factory()
        try:
            if partition in found:
                restore(_records(conf, found[partition], lambda n: None), partition, engine)
            rows(engine, partition, existing, write, by_partition[partition])
        finally:
            engine.close()
        on_progress("rows", 1)
    return report
