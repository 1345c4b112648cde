"""A broker-free model of the worker's checkpoint loop, for engine tests.

:class:`Harness` plays a Kafka log of events through :class:`streams.engine.Engine` the
way :mod:`streams.app` does — apply, then checkpoint: changelog, OLAP rows, commit — and
can crash at any point of that sequence, restart from the compacted changelog and the
committed offsets, fail an OLAP write, or lose part of a changelog flush.
:class:`FakeOlap` keeps what ReplacingMergeTree shows with ``FINAL``.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sluice.olap.catalog import OLAP_TABLES
from streams.engine import Checkpoint, Engine
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
        """key -> public columns (no updated/_version/_deleted), deleted rows hidden."""
        spec = OLAP_TABLES[table]
        public = [c for c in spec.columns if c not in INTERNAL_COLUMNS]
        return {
            key: tuple(row[c] for c in public)
            for key, row in self.tables[table].items()
            if not row.get("_deleted")
        }


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    family: str
    event: dict[str, Any]


@dataclass
class Harness:
    """One consumer over every partition; checkpoints every ``every`` events."""

    partitions: int = 3
    every: int = 250
    engine: Engine = field(default_factory=Engine)
    olap: FakeOlap = field(default_factory=FakeOlap)
    changelog: dict[str, list] = field(default_factory=dict)  # compacted: last value per key
    log: list[Record] = field(default_factory=list)
    next_offset: dict[tuple[str, int], int] = field(default_factory=dict)
    committed: int = 0  # index into log: everything before it is acked
    position: int = 0  # next index to apply
    restores: int = 0

    def produce(self, events: Iterable[Mapping[str, Any]]) -> None:
        for event in events:
            family = family_of(event["event_type"])
            assert family is not None
            partition = zlib.crc32(event["tenant_id"].encode()) % self.partitions
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
        """Changelog, then rows, then commit. ``lose_changelog``: crash mid-flush."""
        ckpt = self.engine.snapshot()
        if lose_changelog:
            rng = rng or random.Random(0)
            # a crash in the middle of a flush: an arbitrary subset arrives, then nothing
            for _, key, value in ckpt.changelog:
                if rng.random() > lose_changelog:
                    self.changelog[key] = value
            self.crash()
            return False
        for _, key, value in ckpt.changelog:
            self.changelog[key] = value
        try:
            self.olap.fail_next = olap_fails
            self._write(ckpt)
        except RuntimeError:
            self.engine.requeue(ckpt)
            return False
        self.committed = self.position
        return True

    def _write(self, ckpt: Checkpoint) -> None:
        for table, rows in ckpt.rows.items():
            self.olap.insert(table, self.engine.columns(table), rows)

    def crash(self) -> None:
        """kill -9: a new engine restores from the changelog and resumes at the commit."""
        self.engine = Engine()
        self.engine.restore(list(self.changelog.items()))
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
        width = len(OLAP_TABLES[table].key)
        out[table] = {tuple(r[:width]): tuple(r) for r in rows}
    return out
