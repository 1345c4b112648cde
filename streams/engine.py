"""The worker's state, without Faust: per-partition rollup state, checkpoints, restore.

The Faust app (:mod:`streams.app`) feeds decoded events in and persists what a
checkpoint hands out; everything here is synchronous and testable without a broker.

Checkpoint order (why it is safe)
---------------------------------
1. changed email states go to the changelog topic and the producer is flushed;
2. changed rollup rows are written to ClickHouse (absolute values, idempotent);
3. only then are the events acknowledged, so Faust commits their offsets.

A crash anywhere replays events whose effects may already be in the changelog or the
OLAP: merges are idempotent and rows are absolute values, so the replay changes nothing.
Row versions come from source offsets, never from clocks, so a late write of an older
snapshot cannot win over a newer one after a rebalance between hosts with skewed clocks.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from streams.rollups import EMAIL_ROLLUPS, EmailRollups, EmailState, Rollup, RowKey

POSITION_TAG = "\x00pos"


@dataclass
class PartitionState:
    """Everything the worker knows about one partition number (all event topics)."""

    partition: int
    email: EmailRollups = field(default_factory=EmailRollups)
    # next offset to apply, per source topic (monotonic; restored from the changelog)
    positions: dict[str, int] = field(default_factory=dict)
    positions_dirty: bool = False

    def version(self) -> int:
        """A number that only grows as this partition's events are applied."""
        return sum(self.positions.values())


@dataclass
class Checkpoint:
    """What one checkpoint must persist; handed back to :meth:`Engine.requeue` on failure."""

    changelog: list[tuple[int, str, list]] = field(default_factory=list)
    rows: dict[str, list[list]] = field(default_factory=dict)
    dirty_rows: dict[int, dict[str, list[tuple[RowKey, tuple[int, ...]]]]] = field(
        default_factory=dict
    )
    dirty_emails: dict[int, list[tuple[tuple[str, str], EmailState]]] = field(
        default_factory=dict
    )

    def empty(self) -> bool:
        return not self.changelog and not self.rows


class Engine:
    """Per-partition state of one worker process."""

    def __init__(self, rollups: Iterable[Rollup] = EMAIL_ROLLUPS) -> None:
        self.rollups = tuple(rollups)
        self._by_table = {r.table: r for r in self.rollups}
        self.partitions: dict[int, PartitionState] = {}

    def state(self, partition: int) -> PartitionState:
        ps = self.partitions.get(partition)
        if ps is None:
            ps = self.partitions[partition] = PartitionState(partition, EmailRollups(self.rollups))
        return ps

    # -- the hot path -----------------------------------------------------------------
    def apply(self, partition: int, topic: str, offset: int, family: str, event: Mapping) -> None:
        """Apply one decoded event of ``family`` read at ``topic[partition]@offset``."""
        ps = self.state(partition)
        if family == "email":
            ps.email.apply(event)
        self.advance(ps, topic, offset)

    def apply_email(self, partition: int, topic: str, offset: int, event: Mapping) -> None:
        self.apply(partition, topic, offset, "email", event)

    def advance(self, ps: PartitionState, topic: str, offset: int) -> None:
        """Record that ``offset`` of ``topic`` was applied (dead letters count too)."""
        if offset + 1 > ps.positions.get(topic, 0):
            ps.positions[topic] = offset + 1
            ps.positions_dirty = True

    # -- checkpoints ------------------------------------------------------------------
    def snapshot(self, now: datetime | None = None) -> Checkpoint:
        """Take everything changed since the last snapshot (clears the dirty sets)."""
        now = now or datetime.now(tz=UTC)
        ckpt = Checkpoint()
        for partition, ps in self.partitions.items():
            emails = ps.email.take_dirty_emails()
            if emails:
                ckpt.dirty_emails[partition] = emails
                for (tenant, email_id), state in emails:
                    ckpt.changelog.append((partition, changelog_key(tenant, email_id), [partition, *state]))
            if ps.positions_dirty:
                for topic, pos in ps.positions.items():
                    ckpt.changelog.append(
                        (partition, json.dumps([POSITION_TAG, topic, partition]), [partition, pos])
                    )
                ps.positions_dirty = False
            dirty = ps.email.take_dirty_rows()
            if dirty:
                ckpt.dirty_rows[partition] = dirty
                version = ps.version()
                for table, items in dirty.items():
                    out = ckpt.rows.setdefault(table, [])
                    out.extend([*key, *values, now, version] for key, values in items)
        return ckpt

    def requeue(self, ckpt: Checkpoint) -> None:
        """A checkpoint failed: mark its rows and emails dirty again (current values win)."""
        for partition, tables in ckpt.dirty_rows.items():
            if partition in self.partitions:
                self.partitions[partition].email.requeue(tables)
        for partition, emails in ckpt.dirty_emails.items():
            if partition in self.partitions:
                ps = self.partitions[partition]
                ps.email.dirty_emails.update(k for k, _ in emails if k in ps.email.emails)
                ps.positions_dirty = True

    def columns(self, table: str) -> list[str]:
        rollup = self._by_table[table]
        return [*rollup.key_columns, *(m for m, _ in rollup.metrics), "updated", "_version"]

    # -- rebalancing ------------------------------------------------------------------
    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions this worker no longer owns (their state lives in the changelog)."""
        for partition in partitions:
            self.partitions.pop(partition, None)

    def restore(self, entries: Iterable[tuple[str, list]]) -> set[int]:
        """Join changelog entries (key, value) into state; return the partitions touched.

        Rows of restored partitions are marked dirty: the OLAP may lag the changelog.
        """
        touched: set[int] = set()
        for key, value in entries:
            if value is None:
                continue
            partition = value[0]
            ps = self.state(partition)
            touched.add(partition)
            parsed = json.loads(key)
            if parsed[0] == POSITION_TAG:
                topic = parsed[1]
                ps.positions[topic] = max(ps.positions.get(topic, 0), value[1])
            else:
                tenant, email_id = parsed
                ps.email.restore(tenant, email_id, value[1:])
        for partition in touched:
            self.partitions[partition].email.mark_all_dirty()
            # don't resend the restored states to the changelog they came from
            self.partitions[partition].email.dirty_emails.clear()
        return touched


def changelog_key(tenant: str, email_id: str) -> str:
    """Changelog key of one email: JSON, so no separator inside an id can collide."""
    return json.dumps([tenant, email_id], ensure_ascii=False)
