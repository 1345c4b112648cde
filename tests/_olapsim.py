"""A broker-free stand-in for Kafka and ClickHouse around the worker's real checkpoint.

:class:`Harness` plays a log of events through :class:`streams.engine.Engine` and runs the
worker's own :class:`streams.checkpoint.Checkpointer` every ``every`` events, with fake
ports: the changelog is a dict (compacted: last value per key), the OLAP is
:class:`FakeOlap` (what ReplacingMergeTree shows with ``FINAL``), offsets are an index into
the log. It can fail an OLAP write, lose part of a changelog flush and crash (kill -9:
a new engine restored from the changelog resumes at the last commit).

Events land on the partition the topic catalog's key puts them (murmur2, like every
producer), so email traffic spreads over every partition as in production; the fake
OLAP's :meth:`FakeOlap.final` shows what the ``*_v`` views show, combining the shards'
rows as the catalog's merges say (tests check it against the real views in chDB).
"""

from __future__ import annotations

import asyncio
import random
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sluice.olap.catalog import OLAP_TABLES, Table
from streams.checkpoint import Checkpointer, Ports, Progress
from streams.engine import Engine
from topics.catalog import Catalog
from topics.taxonomy import family_of

INTERNAL_COLUMNS = ("updated", "_version", "_deleted")


class FakeOlap:
    """Tables as ``SELECT ... FINAL`` shows them (highest ``_version`` wins, ties: last insert)."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[tuple, dict[str, Any]]] = {t: {} for t in OLAP_TABLES}
        self.inserts: dict[str, int] = {t: 0 for t in OLAP_TABLES}
        self.fail_next = False

    def insert(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("OLAP unavailable")
        spec = OLAP_TABLES[table]
        assert list(columns) == list(spec.columns), (table, columns)
        store = self.tables[table]
        for values in rows:
            row = dict(zip(columns, values, strict=True))
            key = tuple(row[c] for c in spec.key)
            old = store.get(key)
            if "_version" in row:
                if old is None or row["_version"] >= old["_version"]:
                    store[key] = row
            else:
                # immutable fact rows: a rewrite must be byte-identical
                assert old is None or old == row, (table, key, old, row)
                store[key] = row
            self.inserts[table] += 1

    def final(self, table: str) -> dict[tuple, tuple]:
        """What ``<table>_v`` shows: view key -> its columns but ``updated``; deleted rows
        hidden; a sharded table's rows of one key combined."""
        spec = OLAP_TABLES[table]
        rows = [r for r in self.tables[table].values() if not r.get("_deleted")]
        public = [c for c in spec.view_columns if c not in INTERNAL_COLUMNS]
        if not spec.sharded:
            return {tuple(r[c] for c in spec.key): tuple(r[c] for c in public) for r in rows}
        return {k: tuple(v[c] for c in public) for k, v in combine(spec, rows).items()}


def combine(spec: Table, rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """The catalog's merges (:class:`sluice.olap.catalog.Merge`) over the rows of every
    shard, in Python: view key -> the view's columns."""
    key = spec.view_key
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in key), []).append(r)
    merges = {c: spec.merge_of(spec.column(c)) for c in spec.view_columns if c not in key}
    out: dict[tuple, dict[str, Any]] = {}
    for k, group in groups.items():
        v: dict[str, Any] = dict(zip(key, k, strict=True))
        for c, m in merges.items():
            values = [r[c] for r in group]
            present = [x for x in values if x is not None]
            if m.kind == "sum":
                v[c] = sum(values)
            elif m.kind == "min":
                v[c] = min(present, default=None)
            elif m.kind == "max":
                v[c] = max(present, default=None)
            elif m.kind == "distinct":
                v[c] = len(set().union(*(r[m.args[0]] for r in group)))
        for c, m in merges.items():
            if m.kind == "first_positive":
                v[c] = next((value for n, value in m.args if v[n] > 0), "")
            elif m.kind == "ratio":
                num, den = m.args
                v[c] = v[num] / v[den] if v[den] else None
        out[k] = v
    carried = [c for c, m in merges.items() if m.kind == "carry"]
    if carried:
        markers = {n for c in carried for n in merges[c].args}
        plans = sorted(
            (r for r in rows if any(r[n] > 0 for n in markers)), key=lambda r: r[key[-1]]
        )
        for k, v in out.items():
            match = None
            for r in plans:  # ASOF: the latest plan row of the company at or before
                if tuple(r[c] for c in key[:-1]) == k[:-1] and r[key[-1]] <= k[-1]:
                    match = r
            for c in carried:
                default = None if spec.column(c).type.startswith("Nullable") else 0
                v[c] = match[c] if match is not None else default
    return out


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    family: str
    event: dict[str, Any]


class _Sinks:
    def held(self) -> list[str]:
        return []

    async def flush(self) -> list:
        return []

    def restore_rejected(self, rejected: list) -> None:
        assert not rejected


class _DeadLetters:
    async def rejected(self, item: Any) -> None:
        raise AssertionError("no sink in the harness refuses events")

    async def flush(self) -> None:
        return None


class _Changelog:
    """The compacted changelog; ``lose`` makes the next flush deliver a random part and fail."""

    def __init__(self, store: dict[tuple[int, str], list]) -> None:
        self.store = store
        self.queued: list[tuple[int, str, list]] = []
        self.lose = 0.0
        self.rng = random.Random(0)

    def write(self, entries: Sequence[tuple[int, str, list]]) -> None:
        self.queued.extend(entries)

    def flush(self) -> None:
        queued, self.queued = self.queued, []
        lose, self.lose = self.lose, 0.0
        for partition, key, value in queued:
            if not lose or self.rng.random() > lose:
                if value is None:  # a tombstone: compaction removes the key
                    self.store.pop((partition, key), None)
                else:
                    self.store[(partition, key)] = value
        if lose:
            raise RuntimeError("crashed in the middle of a changelog flush")

    async def acknowledged(self) -> None:
        self.flush()


class _Warehouse:
    def __init__(self, harness: Harness) -> None:
        self.harness = harness

    def write(self, rows: dict[str, list[list]]) -> None:
        h = self.harness
        for table, table_rows in rows.items():
            h.olap.insert(table, h.engine.columns(table), table_rows)


class _Erasures:
    """The erasure registry topic (a list, the durable copy) and the OLAP purge."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness

    def publish(self, entries: Sequence[Any]) -> None:
        self.harness.registry_log.extend(entries)

    def settle(self, work: Any) -> tuple[dict[str, set[str]], list[tuple[Any, bool]]]:
        from sluice.privacy import Outcome, lead_ref

        h = self.harness
        if h.purge_fails:
            return {}, [(f, False) for f in work.forget]
        for table in ("lead_analytics",):
            store = h.olap.tables[table]
            for key in [k for k in store if lead_ref(k[0], k[1]) in work.purge.get(k[0], ())]:
                del store[key]
        for f in work.forget:
            h.registry_log.append(
                Outcome("posthog", f.tenant, f.ref, f"partition-{f.partition}", "not_configured", 0)
            )
        return work.purge, [(f, True) for f in work.forget]


class _Group:
    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}

    def generation(self) -> int:
        return 1

    def assignment(self) -> set:
        return set(self.offsets) | {("*", -1)}

    async def commit(self, offsets: Mapping[Any, int]) -> bool:
        self.offsets.update(offsets)
        return True


async def _direct(fn: Any, *args: Any) -> Any:
    return fn(*args)


@dataclass
class Harness:
    """One consumer over every partition; checkpoints every ``every`` events."""

    partitions: int = 3
    every: int = 250
    engine: Engine = field(default_factory=Engine)
    #: registry -> components factory of a new engine after a crash (None: the default)
    components: Any = None
    #: event -> the string its partition is a crc32 of (None: the topic catalog's key)
    partition_key: Any = None
    olap: FakeOlap = field(default_factory=FakeOlap)
    # compacted: the last value per key and partition (Kafka compacts each partition)
    changelog: dict[tuple[int, str], list] = field(default_factory=dict)
    log: list[Record] = field(default_factory=list)
    next_offset: dict[tuple[str, int], int] = field(default_factory=dict)
    committed: int = 0  # index into log: everything before it is acked
    position: int = 0  # next index to apply
    restores: int = 0
    #: the erasure registry topic (its records, in order) and how far the engine follows it
    registry_log: list[Any] = field(default_factory=list)
    followed: int = 0
    purge_fails: bool = False

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._changelog = _Changelog(self.changelog)
        self._checkpointer = self._new_checkpointer()

    def _new_checkpointer(self) -> Checkpointer:
        ports = Ports(
            _Sinks(), _DeadLetters(), self._changelog, _Warehouse(self), _Group(), _Erasures(self)
        )
        self.progress = Progress()
        return Checkpointer(self.engine, self.progress, ports, asyncio.Lock(), run_blocking=_direct)

    def produce(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Append to the log, each event on the partition its family's key puts it."""
        catalog = Catalog(partitions=self.partitions)
        for event in events:
            family = family_of(event["event_type"])
            assert family is not None
            if self.partition_key is None:
                partition = catalog.for_family(family).partition_of(event)
            else:
                partition = zlib.crc32(self.partition_key(event).encode()) % self.partitions
            topic = f"events.{family}"
            offset = self.next_offset.get((topic, partition), 0)
            self.next_offset[(topic, partition)] = offset + 1
            self.log.append(Record(topic, partition, offset, family, dict(event)))

    def run(self, until: int | None = None, *, checkpoint: bool = True) -> None:
        """Apply up to ``until`` (default: the end), checkpointing as the worker does;
        ``checkpoint=False`` leaves what came after the last periodic checkpoint pending."""
        end = len(self.log) if until is None else min(until, len(self.log))
        while self.position < end:
            r = self.log[self.position]
            self.engine.apply(r.partition, r.topic, r.offset, r.family, r.event)
            self.progress.applied[(r.topic, r.partition)] = r.offset + 1
            self.progress.unflushed += 1
            self.position += 1
            if self.position % self.every == 0:
                self.checkpoint()
        if checkpoint:
            self.checkpoint()

    def checkpoint(
        self,
        *,
        olap_fails: bool = False,
        lose_changelog: float = 0.0,
        rng: random.Random | None = None,
    ) -> bool:
        """The worker's checkpoint. ``olap_fails``: the OLAP write fails (the rows are
        retried first at the next one); ``lose_changelog``: a crash mid changelog flush."""
        position = self.position
        self.olap.fail_next = olap_fails
        if lose_changelog:
            self._changelog.lose, self._changelog.rng = lose_changelog, rng or random.Random(0)
        outcome = self._loop.run_until_complete(self._checkpointer.run())
        self.olap.fail_next = False
        if lose_changelog:
            self.crash()
            return False
        if outcome.ok:
            self.committed = position
        self.follow()
        return outcome.ok

    def follow(self) -> int:
        """The registry follower: hand the records written since to the engine."""
        from sluice.privacy import Erasure

        new = self.registry_log[self.followed :]
        self.followed = len(self.registry_log)
        return self.engine.erase(e for e in new if isinstance(e, Erasure))

    def crash(self) -> None:
        """kill -9: a new engine restores from the changelog and resumes at the commit;
        the erasure registry is read whole first (its topic is the durable copy)."""
        from sluice.privacy import Erasure, Registry

        registry = Registry(e for e in self.registry_log if isinstance(e, Erasure))
        self.followed = len(self.registry_log)
        self.engine = Engine(
            self.components(registry) if self.components else None, registry=registry
        )
        self.engine.restore([(key, value) for (_, key), value in self.changelog.items()])
        self.engine.purge_all()
        self._checkpointer = self._new_checkpointer()
        self.position = self.committed
        self.restores += 1


def reference_tables(client: Any, wl: Any) -> dict[str, dict[tuple, tuple]]:
    """Every analytics table computed from ``wl``'s facts by REFERENCE_SQL (in chDB)."""
    import uuid

    from dev.workload import (
        BUSINESS_DDL,
        BUSINESS_FACT_COLUMNS,
        EMAIL_FACT_COLUMNS,
        EMAILS_DDL,
        REFERENCE_SQL,
        WARMUP_FACT_COLUMNS,
        WARMUPS_DDL,
        business_rows,
        fact_rows,
        warmup_rows,
    )

    suffix = uuid.uuid4().hex[:8]
    names = {k: f"ref_{k}_{suffix}" for k in ("emails", "warmups", "business")}
    for ddl, name, columns, rows in (
        (EMAILS_DDL, "emails", EMAIL_FACT_COLUMNS, fact_rows(wl.facts)),
        (WARMUPS_DDL, "warmups", WARMUP_FACT_COLUMNS, warmup_rows(getattr(wl, "warmups", []))),
        (
            BUSINESS_DDL,
            "business",
            BUSINESS_FACT_COLUMNS,
            business_rows(getattr(wl, "business", [])),
        ),
    ):
        client.command(ddl.format(**{name: names[name]}))
        if rows:
            client._client.insert(names[name], rows, column_names=columns)
    out = {}
    for table, sql in REFERENCE_SQL.items():
        _, rows = client.query(sql.format(**names))
        width = len(OLAP_TABLES[table].view_key)
        out[table] = {tuple(r[:width]): tuple(r) for r in rows}
    return out
