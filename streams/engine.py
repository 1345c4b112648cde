"""The worker's state, without Faust: per-partition components, checkpoints, restore.

The worker (:mod:`streams.worker`) feeds decoded events in and persists what a
checkpoint hands out; everything here is synchronous and testable without a broker.
Each partition's state is a set of components (:mod:`streams.state`): email and warm-up
attribution, plan changes, the audit chain, sensitive access, system events.

Checkpoint order (why it is safe)
---------------------------------
1. changed state goes to the changelog topic and the producer is flushed;
2. changed OLAP rows are written to ClickHouse (absolute values, idempotent);
3. only then are the events acknowledged, so Faust commits their offsets.

A crash anywhere replays events whose effects may already be in the changelog or the
OLAP: merges are idempotent and rows are absolute values, so the replay changes nothing.
Row versions come from source offsets, never from clocks, so a late write of an older
snapshot cannot win over a newer one after a rebalance between hosts with skewed clocks.

The caller hands a failed checkpoint back with :meth:`Engine.requeue` *before* taking the
next snapshot; a snapshot taken without a requeue tells the components the previous one
succeeded (the audit chain marks its rows written then).

Changelog format: keys are JSON lists — ``[tenant, email_id]`` for email states (the
first release's format), ``["\\x00pos", topic, partition]`` for positions, and
``[component tag, ...]`` for every other component. Values are lists whose first element
is the partition. Entries with a tag this version does not know are ignored. A tombstone
(no value) removes the entry from the partition it is on: ``sluice topics rekey`` leaves
one where it moved a state to the partition its new key maps to (:mod:`streams.rekey`);
restores read a partition in order, so what came before the tombstone is forgotten.

Where an event's state lives
----------------------------
On its *home* partition: where the topic catalog's key for its family puts it
(:meth:`topics.catalog.TopicSpec.home`). That is the partition it was read from, unless a
producer used another key (a record from before a re-key, a replayed dead letter): the
worker forwards such a record to its home instead of applying it, and backfill applies
it there (:meth:`Engine.apply`'s ``home``), while the offset it was read at counts for the
partition it was read from.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from streams.compliance import AuditLog, SensitiveAccess
from streams.incidents import SystemEvents
from streams.rollups import DAY_MS, BillingPlans, EmailRollups, WarmupRollups
from streams.state import Component, Taken, sort_key

if TYPE_CHECKING:
    from sluice.settings import Settings
    from streams.spill import SpillStore

POSITION_TAG = "\x00pos"
VERSION_COLUMNS = ("updated", "_version")
SHARD_COLUMN = "shard"  # sluice.olap.catalog.SHARD_COLUMN (a test checks they agree)


def default_components(
    window_ms: int | None = None, new_map: Callable[[], MutableMapping] = dict
) -> list[Component]:
    """Every component of one partition, wired together (the worker's configuration).

    ``window_ms``: the attribution window of email engagement (None: unbounded);
    ``new_map``: the maps that grow with emails and leads (see :mod:`streams.spill`).
    """
    return [
        EmailRollups(window_ms=window_ms, new_map=new_map),
        WarmupRollups(new_map=new_map),
        # plan columns are set on months with plan events only; the billing view carries
        # them to the months after (sends of any partition), so no send row waits on them
        BillingPlans(),
        AuditLog(),
        SensitiveAccess(),
        SystemEvents(),
    ]


@dataclass(frozen=True)
class TableLayout:
    """How one OLAP table's rows are assembled from the components that fill it."""

    name: str
    key_columns: tuple[str, ...]
    parts: tuple[tuple[str, tuple[str, ...]], ...]  # (component tag, value columns)
    versioned: bool
    sharded: bool = False

    @property
    def columns(self) -> list[str]:
        values = [c for _, cols in self.parts for c in cols]
        shard = (SHARD_COLUMN,) if self.sharded else ()
        return [
            *self.key_columns,
            *shard,
            *values,
            *(VERSION_COLUMNS if self.versioned else ()),
        ]


def layouts(components: Iterable[Component]) -> dict[str, TableLayout]:
    """Join the components' table parts; parts of one table must agree on key and kind."""
    found: dict[str, TableLayout] = {}
    for component in components:
        for part in component.parts():
            layout = found.get(part.table)
            entry = (component.tag, part.value_columns)
            if layout is None:
                found[part.table] = TableLayout(
                    part.table, part.key_columns, (entry,), part.versioned, part.sharded
                )
                continue
            if (layout.key_columns, layout.versioned, layout.sharded) != (
                part.key_columns,
                part.versioned,
                part.sharded,
            ):
                raise ValueError(f"components disagree on the key of {part.table}")
            found[part.table] = TableLayout(
                part.table,
                layout.key_columns,
                (*layout.parts, entry),
                layout.versioned,
                layout.sharded,
            )
    return found


@dataclass
class PartitionState:
    """Everything the worker knows about one partition number (all event topics)."""

    partition: int
    components: Sequence[Component] = field(default_factory=default_components)
    # next offset to apply, per source topic (monotonic; restored from the changelog)
    positions: dict[str, int] = field(default_factory=dict)
    positions_dirty: bool = False

    def __post_init__(self) -> None:
        self.by_tag: dict[str, Component] = {c.tag: c for c in self.components}
        self.by_family: dict[str, list[Component]] = {}
        for component in self.components:
            for family in component.families:
                self.by_family.setdefault(family, []).append(component)

    @property
    def email(self) -> EmailRollups:
        """The email attribution component (untagged)."""
        component = self.by_tag[""]
        assert isinstance(component, EmailRollups)
        return component

    def version(self) -> int:
        """A number that only grows as this partition's events are applied."""
        return sum(self.positions.values())


@dataclass(frozen=True)
class Forward:
    """A record read at a partition that is not its home: produced again, unchanged, to
    its home partition with the catalog's key (see the module docstring)."""

    topic: str
    partition: int  # the home
    key: bytes
    value: bytes
    origin: str  # "partition:offset" it was read at (header sluice.forwarded_from)


@dataclass
class Checkpoint:
    """What one checkpoint must persist; handed back to :meth:`Engine.requeue` on failure."""

    changelog: list[tuple[int, str, list]] = field(default_factory=list)
    rows: dict[str, list[list]] = field(default_factory=dict)
    # partition -> component tag -> what the component handed out
    taken: dict[int, dict[str, Taken]] = field(default_factory=dict)
    positions: set[int] = field(default_factory=set)
    # records to produce to their home partition before the offsets are committed
    forwards: list[Forward] = field(default_factory=list)

    def empty(self) -> bool:
        return not self.changelog and not self.rows and not self.forwards


class Engine:
    """Per-partition state of one worker process."""

    def __init__(
        self,
        components: Callable[[], Sequence[Component]] = default_components,
        spill: SpillStore | None = None,
    ) -> None:
        """``spill``: the disk tier ``components`` put their maps in (closed by :meth:`close`)."""
        self.factory = components
        probe = components()
        self.layouts = layouts(probe)
        for component in probe:
            component.close()  # its maps, if they live in a spill store
        self.partitions: dict[int, PartitionState] = {}
        self.spill = spill
        self.forwards: list[Forward] = []

    def state(self, partition: int) -> PartitionState:
        ps = self.partitions.get(partition)
        if ps is None:
            ps = self.partitions[partition] = PartitionState(partition, self.factory())
        return ps

    # -- the hot path -----------------------------------------------------------------
    def apply(
        self,
        partition: int,
        topic: str,
        offset: int,
        family: str,
        event: Mapping,
        home: int | None = None,
    ) -> None:
        """Apply one decoded event of ``family`` read at ``topic[partition]@offset``, to
        the state of its ``home`` partition (default: the one it was read from; see the
        module docstring). The offset counts for ``partition``."""
        ps = self.state(partition)
        target = ps if home is None or home == partition else self.state(home)
        for component in target.by_family.get(family, ()):
            component.apply(event)
        self.advance(ps, topic, offset)

    def apply_email(self, partition: int, topic: str, offset: int, event: Mapping) -> None:
        self.apply(partition, topic, offset, "email", event)

    def forward(self, partition: int, topic: str, offset: int, record: Forward) -> None:
        """A record read at ``topic[partition]@offset`` belongs to another partition: the
        next checkpoint produces ``record`` there (before it commits ``offset``)."""
        self.forwards.append(record)
        self.advance(self.state(partition), topic, offset)

    def advance(self, ps: PartitionState, topic: str, offset: int) -> None:
        """Record that ``offset`` of ``topic`` was applied (dead letters count too)."""
        if offset + 1 > ps.positions.get(topic, 0):
            ps.positions[topic] = offset + 1
            ps.positions_dirty = True

    # -- checkpoints ------------------------------------------------------------------
    def snapshot(self, now: datetime | None = None) -> Checkpoint:
        """Take everything changed since the last snapshot (clears the dirty sets)."""
        now = now or datetime.now(tz=UTC)
        ckpt = Checkpoint(forwards=self.forwards)
        self.forwards = []
        for partition, ps in self.partitions.items():
            taken = {c.tag: c.take() for c in ps.components}
            ckpt.taken[partition] = taken
            for tag, t in taken.items():
                for key, value in t.changelog:
                    ckpt.changelog.append(
                        (partition, changelog_key(*key, tag=tag), [partition, *value])
                    )
            if ps.positions_dirty:
                ckpt.positions.add(partition)
                for topic, pos in ps.positions.items():
                    ckpt.changelog.append(
                        (partition, json.dumps([POSITION_TAG, topic, partition]), [partition, pos])
                    )
                ps.positions_dirty = False
            version = ps.version()
            for layout in self.layouts.values():
                rows = self._assemble(ps, layout, taken)
                if rows:
                    suffix = [now, version] if layout.versioned else []
                    if layout.sharded:
                        width = len(layout.key_columns)
                        rows = [[*r[:width], partition, *r[width:]] for r in rows]
                    ckpt.rows.setdefault(layout.name, []).extend(r + suffix for r in rows)
        return ckpt

    def _assemble(
        self, ps: PartitionState, layout: TableLayout, taken: Mapping[str, Taken]
    ) -> list[list]:
        """Rows of one table: each dirty key with every component's part joined."""
        parts = [taken[tag].rows.get(layout.name, {}) for tag, _ in layout.parts]
        if len(parts) == 1:
            return [[*key, *values] for key, values in parts[0].items()]
        keys = sorted(set().union(*parts), key=sort_key)
        rows = []
        for key in keys:
            row = list(key)
            for (tag, _), part in zip(layout.parts, parts, strict=True):
                values = part.get(key)
                row.extend(values if values is not None else ps.by_tag[tag].value(layout.name, key))
            rows.append(row)
        return rows

    def requeue(self, ckpt: Checkpoint) -> None:
        """A checkpoint failed: mark what it carried dirty again (current values win)."""
        self.forwards[:0] = ckpt.forwards
        for partition, taken in ckpt.taken.items():
            ps = self.partitions.get(partition)
            if ps is None:
                continue  # revoked meanwhile: its new owner restores and replays
            for tag, t in taken.items():
                ps.by_tag[tag].requeue(t)
            if partition in ckpt.positions:
                ps.positions_dirty = True

    def take_late(self) -> dict[str, int]:
        """Events outside the attribution window since the last call, by event type."""
        total: dict[str, int] = {}
        for ps in self.partitions.values():
            late = ps.email.late
            for event_type, n in late.items():
                total[event_type] = total.get(event_type, 0) + n
            late.clear()
        return total

    @classmethod
    def for_settings(cls, settings: Settings) -> Engine:
        """The engine the worker runs with these settings (backfill uses the same)."""
        days = settings.sluice_attribution_window_days
        window_ms = None if days is None else int(days * DAY_MS)
        if settings.sluice_state_store == "memory":
            return cls(partial(default_components, window_ms=window_ms))
        from streams.spill import SpillStore

        spill = SpillStore(
            Path(settings.sluice_data_dir) / "spill", settings.sluice_state_memory_items
        )
        return cls(partial(default_components, window_ms=window_ms, new_map=spill.map), spill)

    def close(self) -> None:
        """Release the disk tier, if any (the worker's shutdown)."""
        self.drop(list(self.partitions))
        if self.spill is not None:
            self.spill.close()

    def columns(self, table: str) -> list[str]:
        """Column names of the rows :meth:`snapshot` hands out for ``table``."""
        return self.layouts[table].columns

    # -- rebalancing ------------------------------------------------------------------
    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions this worker no longer owns (their state lives in the changelog)."""
        for partition in partitions:
            ps = self.partitions.pop(partition, None)
            if ps is not None:
                for component in ps.components:
                    component.close()

    def restore(self, entries: Iterable[tuple[str, list]]) -> set[int]:
        """Join changelog entries (key, value) into state; return the partitions touched.

        Rows of restored partitions are rewritten (the OLAP may lag the changelog).
        """
        touched = self.join(entries)
        self.restored(touched)
        return touched

    def restored(self, partitions: Iterable[int]) -> None:
        """After :meth:`join` of every entry: reconcile, and rewrite the partitions' rows
        over the next snapshots."""
        for partition in partitions:
            for component in self.partitions[partition].components:
                component.restored()

    def join(self, entries: Iterable[tuple[str, list] | tuple[str, list | None, int]]) -> set[int]:
        """Join changelog entries into state, a batch at a time (call :meth:`restored`
        once all are in); return the partitions touched.

        An entry is ``(key, value)`` or ``(key, value, changelog partition)``; a tombstone
        (value None) needs the partition (its value cannot say) and removes the entry
        there (see the module docstring).
        """
        touched: set[int] = set()
        for entry in entries:
            key, value = entry[0], entry[1]
            if value is None:
                if len(entry) > 2:
                    touched |= self._tombstone(entry[2], key)  # type: ignore[misc]
                continue
            partition = value[0]
            ps = self.state(partition)
            touched.add(partition)
            parsed = json.loads(key)
            head = parsed[0]
            if head == POSITION_TAG:
                topic = parsed[1]
                ps.positions[topic] = max(ps.positions.get(topic, 0), value[1])
            elif head in ps.by_tag and head:
                ps.by_tag[head].restore(parsed[1:], value[1:])
            elif not head.startswith("\x00"):
                ps.email.restore(parsed, value[1:])
            # else: a tag from a newer version; its owner will rebuild it
        return touched

    def _tombstone(self, partition: int, key: str) -> set[int]:
        ps = self.partitions.get(partition)
        if ps is None:
            return set()  # nothing restored there yet: nothing to forget
        parsed = json.loads(key)
        head = parsed[0]
        if head == POSITION_TAG:
            return set()  # positions only grow; never tombstoned
        if head in ps.by_tag and head:
            ps.by_tag[head].remove(parsed[1:])
        elif not head.startswith("\x00"):
            ps.email.remove(parsed)
        return {partition}


def changelog_key(*parts: object, tag: str = "") -> str:
    """Changelog key: JSON, so no separator inside an id can collide; tag first if any."""
    return json.dumps([tag, *parts] if tag else list(parts), ensure_ascii=False)
