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

Local state (``SLUICE_STATE_STORE=rocksdb``): each partition's maps live in its own
RocksDB database (:mod:`streams.store`), which outlives the process. A snapshot also cuts
what changed since the last image (:meth:`PartitionDB.cut`); once the checkpoint made the
changelog and the OLAP rows durable, :meth:`Engine.persist` writes the cut and its marker
in one batch. A restart then opens the image (:meth:`Engine.open`) and joins only the
changelog written after the marker (:mod:`streams.restore`).
Erasure (docs/erasure.md): the engine holds the erasure registry (:mod:`sluice.privacy`),
which the worker fills before any partition is restored and follows while it runs.
:meth:`Engine.erase` hands newly erased leads to every partition's components; rows a
checkpoint writes are filtered against the registry (:meth:`Engine.scrub_rows`), and
:meth:`Engine.erasure_work` hands the checkpoint what must leave the world outside: the
erased leads' OLAP rows, and the per-lead secrets to forget once PostHog was asked.

Changelog format: keys are JSON lists — ``[tenant, email_id]`` for email states (the
first release's format), ``["\\x00pos", topic, partition]`` for positions, and
``[component tag, ...]`` for every other component. Values are lists whose first element
is the partition. Entries with a tag this version does not know are ignored. A tombstone
(no value) removes the entry from the partition it is on (:meth:`Component.forget`):
``sluice topics rekey`` leaves one where it moved a state to the partition its new key
maps to (:mod:`streams.rekey`), an erasure where it destroyed a lead's secret; restores
read a partition in order, so what came before the tombstone is forgotten.

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

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from sluice.privacy import Erasure, Registry
from streams.compliance import AuditLog, SensitiveAccess
from streams.erasure import ErasureRequests, Forget, LeadKeys
from streams.incidents import SystemEvents
from streams.rollups import (
    DAY_MS,
    ERASABLE_TABLES,
    BillingPlans,
    EmailRollups,
    WarmupRollups,
)
from streams.state import Component, MapFactory, Taken, memory_map, sorted_keys

if TYPE_CHECKING:
    from sluice.settings import Settings
    from streams.store import Changelog, Opened, PartitionDB, StateStore, StoreCut

log = logging.getLogger("sluice.engine")

POSITION_TAG = "\x00pos"
# what Engine.join does with an entry (Engine._route)
_EMAIL, _TAGGED, _POSITION, _UNKNOWN = range(4)
#: the local store's map of the erasures a partition's state was scrubbed of
ERASED_HERE = "erasure/applied"
VERSION_COLUMNS = ("updated", "_version")
#: Rows a snapshot marks for rewriting after full rebuilds (every row: the OLAP may lag
#: the changelog), over all partitions (:attr:`Engine.rewrite_rows`); none while a
#: partition of this worker is being restored (:attr:`Engine.restoring`): the rebuilds
#: get the cores first, since they hold up reading, and the rewrite is a repair. A row
#: costs ~25 µs (read from the store, assembled, written to ClickHouse): 50,000 keep a
#: checkpoint near a second, so heartbeats and rebalances are not held up (measured at
#: 5 M emails: 200,000 rows per checkpoint took 5-10 s and delayed a third worker's join
#: by ~20 s). The worker paces it by its interval instead (:data:`REWRITE_ROWS_PER_S`):
#: a quarter of a core, however often it checkpoints.
REWRITE_ROWS = 50_000
REWRITE_ROWS_PER_S = 10_000
SHARD_COLUMN = "shard"  # sluice.olap.catalog.SHARD_COLUMN (a test checks they agree)

#: The version of the state's meaning. Bump it when a component's state changes shape or
#: meaning: a local store of another schema is then rebuilt from the changelog (which
#: every version reads). The fingerprint also covers the components' tags and map names
#: and the attribution window (:func:`state_schema`). 2: tallies are dicts, not Counters,
#: and ``lead_analytics``'s hold day numbers, not dates. 3: a rollup row's tallies are in
#: its row's entry (after its counters), not in a map of their own.
STATE_SCHEMA = 3


def default_components(
    window_ms: int | None = None,
    new_map: MapFactory = memory_map,
    registry: Registry | None = None,
    lead_keys: bool = False,
) -> list[Component]:
    """Every component of one partition, wired together (the worker's configuration).

    ``window_ms``: the attribution window of email engagement (None: unbounded);
    ``new_map``: the maps that grow with emails and leads (:data:`streams.state.MapFactory`);
    ``registry``: the erased leads (None: no erasure is ever consulted);
    ``lead_keys``: mint a secret per lead (only worth it when PostHog is on; secrets
    restored from the changelog are erased either way).
    """
    erased = registry.erased if registry is not None else None
    erasing = registry.erasing if registry is not None else None
    return [
        EmailRollups(window_ms=window_ms, new_map=new_map, erased=erased, erasing=erasing),
        WarmupRollups(new_map=new_map),
        # plan columns are set on months with plan events only; the billing view carries
        # them to the months after (sends of any partition), so no send row waits on them
        BillingPlans(),
        AuditLog(),
        SensitiveAccess(),
        SystemEvents(),
        ErasureRequests(),
        LeadKeys(registry, new_map=new_map, minting=lead_keys),
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


def state_schema(components: Callable[..., Sequence[Component]], extra: str = "") -> str:
    """The fingerprint of the state ``components`` keep: :data:`STATE_SCHEMA`, their tags
    and map names, and ``extra`` (settings that change the state, e.g. the window)."""
    names: list[str] = []

    def recording(name: str = "", json: bool = False) -> dict:
        names.append(f"{name} (json)" if json else name)
        return {}

    probe = components(new_map=recording)
    tags = [c.tag for c in probe]
    for component in probe:
        component.close()
    digest = hashlib.sha256(json.dumps([tags, names, extra]).encode()).hexdigest()[:12]
    return f"{STATE_SCHEMA}-{digest}"


@dataclass
class PartitionState:
    """Everything the worker knows about one partition number (all event topics)."""

    partition: int
    components: Sequence[Component] = field(default_factory=default_components)
    # next offset to apply, per source topic (monotonic; restored from the changelog)
    positions: dict[str, int] = field(default_factory=dict)
    positions_dirty: bool = False
    # the partition's local store (None: state in memory only)
    db: PartitionDB | None = None
    # every changelog entry of this partition before this offset is in the state
    changelog_position: int = 0
    # with a local store: the erasures (tenant, lead ref) its state was scrubbed of, kept
    # in the store (a reopened image is scrubbed of those erased since: Engine.restored)
    erased_here: MutableMapping | None = None
    # opened (or kept) and joining the changelog: until restored(), entries others wrote
    # after ``changelog_position`` may be missing from the state
    joining: bool = False

    def __post_init__(self) -> None:
        self.by_tag: dict[str, Component] = {c.tag: c for c in self.components}
        self.by_family: dict[str, list[Component]] = {}
        for component in self.components:
            for family in component.families:
                self.by_family.setdefault(family, []).append(component)
        # components whose changelog entries the store keeps (their state is not in maps)
        self.logged: frozenset[str] = frozenset(
            c.tag for c in self.components if not c.keeps_state_in_store()
        )

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

    changelog: list[tuple[int, str, list | None]] = field(default_factory=list)  # None: tombstone
    rows: dict[str, list[list]] = field(default_factory=dict)
    # partition -> component tag -> what the component handed out
    taken: dict[int, dict[str, Taken]] = field(default_factory=dict)
    positions: set[int] = field(default_factory=set)
    # records to produce to their home partition before the offsets are committed
    forwards: list[Forward] = field(default_factory=list)
    # partition -> what its local store must write once the rest is durable
    cuts: dict[int, StoreCut] = field(default_factory=dict)
    #: erasure requests for the registry topic (durable before the commit)
    registry: list[Erasure] = field(default_factory=list)

    def empty(self) -> bool:
        return not self.changelog and not self.rows and not self.forwards and not self.registry


@dataclass
class ErasureWork:
    """What the world outside must still forget of erased leads (checkpoint step 5b)."""

    #: tenant -> references whose OLAP rows must go (checked, then deleted)
    purge: dict[str, set[str]] = field(default_factory=dict)
    #: per-lead secrets to forget once the destinations were asked to delete
    forget: list[Forget] = field(default_factory=list)

    def empty(self) -> bool:
        return not self.purge and not self.forget


class Engine:
    """Per-partition state of one worker process."""

    def __init__(
        self,
        components: Callable[..., Sequence[Component]] | None = None,
        store: StateStore | None = None,
        registry: Registry | None = None,
    ) -> None:
        """``store``: the local store whose per-partition databases hold the maps
        ``components`` make (called with ``new_map=``); closed by :meth:`close`.
        ``registry``: the erased leads ``components`` consult (default: the components
        made here get this engine's registry)."""
        self.erasures = registry if registry is not None else Registry()
        if components is None:
            components = partial(default_components, registry=self.erasures)
        self.factory = components
        probe = components()
        self.layouts = layouts(probe)
        for component in probe:
            component.close()
        self.partitions: dict[int, PartitionState] = {}
        self.store = store
        self._io = threading.Lock()  # a store write vs closing its database
        # tenant -> references whose OLAP rows are still to be purged
        self.pending_purge: dict[str, set[str]] = {}
        # records read away from their home, for the next checkpoint to forward
        self.forwards: list[Forward] = []
        # partitions being restored now (streams.restore.Restorer): no rewrites meanwhile
        self.restoring: set[int] = set()
        # per partition, the rows of its rewrite marked so far (for the log line)
        self.rewritten: dict[int, int] = {}
        self.rewrite_rows = REWRITE_ROWS  # rows of pending rewrites each snapshot marks

    def _new_state(self, partition: int, db: PartitionDB | None) -> PartitionState:
        components = self.factory() if db is None else self.factory(new_map=db.map)
        ps = self.partitions[partition] = PartitionState(partition, components, db=db)
        if db is not None:
            ps.erased_here = db.map(ERASED_HERE)
        return ps

    def state(self, partition: int) -> PartitionState:
        """The partition's state; one not open yet starts empty (a worker's partitions are
        opened with :meth:`open` first)."""
        ps = self.partitions.get(partition)
        if ps is None:
            if self.store is not None and not self.store.scratch:
                raise KeyError(f"partition {partition} is not open (Engine.open)")
            db = None if self.store is None else self.store.scratch_db(partition)
            ps = self._new_state(partition, db)
        return ps

    # -- opening a partition ----------------------------------------------------------
    def open(self, partition: int, changelog: Changelog | None = None) -> Opened | None:
        """Bring partition ``partition`` into memory: its local store reopened when it
        holds up (:func:`streams.store.check`), else emptied for a rebuild; None without a
        store (a rebuild into memory). Join the changelog after
        ``ps.changelog_position`` next, then call :meth:`restored` (or :meth:`rebuilt`)."""
        self.drop([partition])
        if self.store is None:
            self._new_state(partition, None)
            return None
        opened = self.store.open(partition, changelog)
        ps = self._new_state(partition, opened.db)
        ps.joining = True
        if opened.reused:
            marker = opened.db.marker
            assert marker is not None
            ps.positions.update(marker.positions)
            ps.changelog_position = marker.offset
            if not marker.rewrite:
                self.begin(partition)
            # the small components' state: their entries, as from the changelog
            self.join(opened.db.log_entries(), partition, from_store=True)
        return opened

    def begin(self, partition: int) -> None:
        """The partition's state is complete up to ``changelog_position`` and its rows are
        in the OLAP: what :meth:`join` adds until :meth:`restored` marks only the rows it
        changes (:meth:`Component.reopened`)."""
        ps = self.partitions[partition]
        ps.joining = True
        for component in ps.components:
            component.reopened()

    def rebuilt(self, partition: int, offset: int) -> None:
        """A rebuild joined the whole changelog up to ``offset``: reconcile (every row is
        rewritten over the next checkpoints), and let the local store become the image at
        the next checkpoint (its marker is written then; until then a restart rebuilds)."""
        ps = self.partitions[partition]
        ps.changelog_position = max(ps.changelog_position, offset)
        if ps.db is not None and ps.db.direct and not ps.db.scratch:
            # a marker may only follow entries written without the WAL once they are in files
            assert not ps.db.unflushed, "PartitionDB.flush() first, under the state lock"
            # before restored(): what it changes (scrubbing leads erased meanwhile) must
            # wait for the image, not be written without the WAL past the flush
            ps.db.imaged()
        self.restored([partition])

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
        ps = self.partitions.get(partition) or self.state(partition)
        target = ps if home is None or home == partition else self.state(home)
        for component in target.by_family.get(family, ()):
            component.apply(event)
        if offset >= ps.positions.get(topic, 0):  # advance(), inline: once per event
            ps.positions[topic] = offset + 1
            ps.positions_dirty = True

    def settle(self) -> None:
        """A batch of :meth:`apply` ended: the components finish what they deferred to
        it (the rollups move each changed state's contribution once per batch)."""
        for ps in self.partitions.values():
            for component in ps.components:
                component.settle()

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
        if not self.restoring:
            self._mark_rewrites(self.rewrite_rows)
        for partition, ps in self.partitions.items():
            taken = {c.tag: c.take() for c in ps.components}
            ckpt.taken[partition] = taken
            imaged = ps.db is not None and not ps.db.direct
            logged = ps.logged if imaged else ()
            image_log: list[tuple[str, list | None]] = []  # the logged entries, for the image
            for tag, t in taken.items():
                keep = tag in logged
                for key, value in t.changelog:
                    entry = (
                        changelog_key(*key, tag=tag),  # once per entry: stdlib JSON, ~2 µs
                        None if value is None else [partition, *value],
                    )
                    ckpt.changelog.append((partition, *entry))
                    if keep:
                        image_log.append(entry)
                ckpt.registry.extend(t.registry)
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
                    out = ckpt.rows.setdefault(layout.name, [])
                    if layout.sharded:  # each row built once: this runs under the state lock
                        width = len(layout.key_columns)
                        out.extend([*r[:width], partition, *r[width:], *suffix] for r in rows)
                    else:
                        out.extend(r + suffix for r in rows)
            if imaged:
                assert ps.db is not None
                rewrite = any(c.rewrite_pending() for c in ps.components)
                cut = ckpt.cuts[partition] = ps.db.cut(image_log, ps.positions, rewrite)
                # what the marker may claim is decided now, with the cut: a restore that
                # finishes before the image is written must not lend it its offset
                cut.base = ps.changelog_position
                cut.settled = not ps.joining
        return ckpt

    def pace_rewrites(self, interval_s: float) -> None:
        """Snapshots taken every ``interval_s`` seconds: rewrite at most
        :data:`REWRITE_ROWS_PER_S` rows a second, and never more than twice
        :data:`REWRITE_ROWS` in one snapshot (a long interval must not make one huge)."""
        rows = min(max(1_000.0, REWRITE_ROWS_PER_S * interval_s), 2 * REWRITE_ROWS)
        self.rewrite_rows = int(rows)  # bounded as a float first: no overflow, however long

    def _mark_rewrites(self, budget: int) -> None:
        """Mark up to ``budget`` rows of the pending rewrites dirty, partition by partition
        (logged when a partition's last rows are marked)."""
        for partition, ps in self.partitions.items():
            pending = [c for c in ps.components if c.rewrite_pending()]
            if not pending:
                continue
            if budget <= 0:
                return
            marked = 0
            for component in pending:
                marked += component.mark_rewrites(budget - marked)
            budget -= marked
            self.rewritten[partition] = self.rewritten.get(partition, 0) + marked
            if not any(c.rewrite_pending() for c in pending):
                rows = self.rewritten.pop(partition)
                if rows:
                    log.info(
                        "partition %d: its rewrite's last rows (%d in all) go out with "
                        "this checkpoint",
                        partition,
                        rows,
                    )

    # -- the local store ----------------------------------------------------------------
    def persist(self, ckpt: Checkpoint, runs: Mapping[int, tuple[int, int]]) -> None:
        """Write each partition's cut and marker (blocking: run in a thread), once the
        checkpoint's changelog is flushed and its OLAP rows are written. ``runs``: per
        changelog partition, the last run of consecutive offsets ``(first, end)`` this
        worker wrote and had acknowledged (:meth:`streams.fetch.ChangelogWriter.runs`).
        Then :meth:`persisted` (or, if this raised, :meth:`unpersisted`).

        The marker is what the cut holds, as of the snapshot: the partition's changelog
        position then (not now: a restore joining entries meanwhile put them in memory,
        not in this cut — a kill -9 after this image would lose them behind a marker
        past them), or the end of this worker's run of entries when the partition was
        not joining at the snapshot and the run starts at or before that position. A gap
        before the run holds another writer's entries (a member that took the partition
        over while this one was frozen past its session), which this state has not
        joined: the marker stays at the position then, and the next restore joins them."""
        assert self.store is not None and self.store.identity is not None
        for partition, cut in ckpt.cuts.items():
            with self._io:
                ps = self.partitions.get(partition)
                db = ps.db if ps is not None else None
                if ps is None or db is None or db is not cut.db or db.db is None:
                    continue  # moved away meanwhile: its next open checks the old image
                run = runs.get(partition)
                own = run[1] if cut.settled and run and run[0] <= cut.base else 0
                offset = max(cut.base, own)
                db.write(cut, self.store.identity, offset)

    def write_image(self, partition: int) -> None:
        """Write the partition's whole state as its image now (blocking): a rebuild in a
        process of its own, which takes no checkpoints (streams/restore.py). Call after
        :meth:`rebuilt`."""
        assert self.store is not None and self.store.identity is not None
        ps = self.partitions[partition]
        assert ps.db is not None and not ps.db.direct
        rewrite = any(c.rewrite_pending() for c in ps.components)
        cut = ps.db.cut([], ps.positions, rewrite)
        try:
            ps.db.write(cut, self.store.identity, ps.changelog_position)
        except BaseException:
            ps.db.abandoned()
            raise
        ps.db.stored(cut)
        ps.db.flush()

    def persisted(self, ckpt: Checkpoint) -> None:
        """The cuts :meth:`persist` wrote are the images now."""
        for partition, cut in ckpt.cuts.items():
            ps = self.partitions.get(partition)
            if ps is None or ps.db is None or ps.db is not cut.db:
                continue
            if cut.marker is None:
                ps.db.abandoned()
                continue
            ps.db.stored(cut)
            ps.changelog_position = max(ps.changelog_position, cut.marker.offset)

    def unpersisted(self, ckpt: Checkpoint) -> None:
        """The cuts were not written: what they carried is changed again."""
        for partition, cut in ckpt.cuts.items():
            ps = self.partitions.get(partition)
            if ps is not None and ps.db is not None and ps.db is cut.db:
                ps.db.abandoned()
        ckpt.cuts = {}

    def _assemble(
        self, ps: PartitionState, layout: TableLayout, taken: Mapping[str, Taken]
    ) -> list[list]:
        """Rows of one table: each dirty key with every component's part joined."""
        parts = [taken[tag].rows.get(layout.name, {}) for tag, _ in layout.parts]
        if len(parts) == 1:
            return [[*key, *values] for key, values in parts[0].items()]
        keys = sorted_keys(set().union(*parts))
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
        self.unpersisted(ckpt)
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
    def for_settings(
        cls, settings: Settings, registry: Registry | None = None, persistent: bool = False
    ) -> Engine:
        """The engine these settings describe, consulting ``registry``'s erased leads.
        ``persistent``: the worker's, whose partitions' stores outlive it
        (``SLUICE_DATA_DIR/state``); otherwise (backfill) a scratch store under
        ``SLUICE_DATA_DIR/scratch``, removed at :meth:`close`."""
        from streams.store import Identity, StateStore

        days = settings.sluice_attribution_window_days
        window_ms = None if days is None else int(days * DAY_MS)
        registry = registry if registry is not None else Registry()
        components = partial(
            default_components,
            window_ms=window_ms,
            registry=registry,
            lead_keys=settings.posthog_enabled,
        )
        if settings.sluice_state_store == "memory":
            return cls(components, registry=registry)
        memory_items = settings.sluice_state_memory_items
        if not persistent:
            store = StateStore(
                Path(settings.sluice_data_dir) / "scratch", memory_items, scratch=True
            )
            return cls(components, store, registry=registry)
        from topics.catalog import Catalog

        identity = Identity(
            app_id=settings.sluice_app_id,
            partitions=settings.sluice_topic_partitions,
            schema=state_schema(components, f"window_ms={window_ms}"),
            changelog=Catalog.from_settings(settings).changelog.name,
        )
        return cls(
            components,
            StateStore.for_app(settings.sluice_data_dir, identity, memory_items),
            registry=registry,
        )

    @property
    def schema(self) -> str | None:
        """The state schema this engine's store checks (None without a store)."""
        identity = self.store.identity if self.store is not None else None
        return identity.schema if identity is not None else None

    # -- erasure ----------------------------------------------------------------------
    def erase(self, entries: Iterable[Erasure]) -> int:
        """Leads the registry newly names erased: every partition forgets them, and their
        OLAP rows are purged at the next checkpoint. Return how many were new."""
        new: dict[str, set[str]] = {}
        for entry in entries:
            if self.erasures.add(entry):
                new.setdefault(entry.tenant, set()).add(entry.ref)
        if new:
            for ps in self.partitions.values():
                self._erase_in(ps, new)
        for tenant, refs in new.items():
            self.pending_purge.setdefault(tenant, set()).update(refs)
        return sum(len(refs) for refs in new.values())

    def _erase_in(self, ps: PartitionState, by_tenant: Mapping[str, Set[str]]) -> None:
        """Scrub one partition's state of ``by_tenant``'s erased leads (one pass per
        component), and note in its store that it was."""
        for component in ps.components:
            component.erase_many(by_tenant)
        if ps.erased_here is not None:
            for tenant, refs in by_tenant.items():
                for ref in refs:
                    ps.erased_here[(tenant, ref)] = 1

    def _scrub_stored(self, ps: PartitionState) -> None:
        """A partition whose state came from its local store: scrub it of the leads erased
        since that image was written (a restore from the changelog alone is scrubbed as it
        is joined; an image may predate erasures this worker learnt from the registry)."""
        if ps.erased_here is None or not len(self.erasures):
            return
        done = ps.erased_here
        todo: dict[str, set[str]] = {}
        for entry in self.erasures:
            if (entry.tenant, entry.ref) not in done:
                todo.setdefault(entry.tenant, set()).add(entry.ref)
        if todo:
            self._erase_in(ps, todo)

    def purge_all(self) -> None:
        """Check every erased lead's OLAP rows at the next checkpoint (start-up: a crash
        may have come between an erasure and its purge)."""
        for entry in self.erasures:
            self.pending_purge.setdefault(entry.tenant, set()).add(entry.ref)

    def scrub_rows(self, rows: dict[str, list[list]]) -> dict[str, list[list]]:
        """``rows`` without those of erased leads (the last guard before the OLAP: rows of
        a failed checkpoint retried after an erasure, rows recomputed by a backfill)."""
        out = {}
        for table, table_rows in rows.items():
            if table in ERASABLE_TABLES and len(self.erasures):
                erased = self.erasures.erased
                table_rows = [r for r in table_rows if not erased(r[0], r[1])]
            if table_rows:
                out[table] = table_rows
        return out

    def erasure_work(self) -> ErasureWork:
        """What checkpoint step 5b must do (the purges stay pending until settled)."""
        work = ErasureWork({t: set(refs) for t, refs in self.pending_purge.items() if refs})
        for partition, ps in self.partitions.items():
            keys = ps.by_tag.get(LeadKeys.tag)
            if isinstance(keys, LeadKeys):
                work.forget.extend(keys.to_forget(partition))
        return work

    def erasure_settled(self, purged: Mapping[str, Iterable[str]], forgotten: Any) -> None:
        """Step 5b's result: ``purged`` references are gone from the OLAP; ``forgotten``
        maps each asked :class:`Forget` to True once its outcome is durable."""
        for tenant, refs in purged.items():
            left = self.pending_purge.get(tenant)
            if left is not None:
                left.difference_update(refs)
                if not left:
                    del self.pending_purge[tenant]
        for forget, done in forgotten:
            ps = self.partitions.get(forget.partition)
            keys = ps.by_tag.get(LeadKeys.tag) if ps is not None else None
            if isinstance(keys, LeadKeys):
                keys.forgotten((forget.tenant, forget.lead), done)

    def holds(self, tenant: str, lead: str) -> dict[int, dict[str, int]]:
        """Per partition, what its state still holds that names the lead (verify)."""
        out = {}
        for partition, ps in sorted(self.partitions.items()):
            found: dict[str, int] = {}
            for component in ps.components:
                found.update(component.holds(tenant, lead))
            if found:
                out[partition] = found
        return out

    def close(self) -> None:
        """Release the local store, if any (the worker's shutdown; its files stay)."""
        self.drop(list(self.partitions))
        if self.store is not None:
            self.store.close()

    def columns(self, table: str) -> list[str]:
        """Column names of the rows :meth:`snapshot` hands out for ``table``."""
        return self.layouts[table].columns

    # -- rebalancing ------------------------------------------------------------------
    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions this worker no longer owns (their state lives in the changelog,
        and in their local store, which stays on disk for a return)."""
        for partition in list(partitions):
            ps = self.partitions.pop(partition, None)
            self.rewritten.pop(partition, None)
            if ps is not None:
                with self._io:
                    for component in ps.components:
                        component.close()
                    if ps.db is not None and ps.erased_here is not None:
                        ps.db.forget(ps.erased_here)
                    if self.store is not None and ps.db is not None:
                        self.store.close_partition(partition)

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
            ps = self.partitions[partition]
            for component in ps.components:
                component.restored()
            self._scrub_stored(ps)
            ps.joining = False

    def join(
        self,
        entries: Iterable[tuple[str, list | None]],
        partition: int | None = None,
        from_store: bool = False,
    ) -> set[int]:
        """Join changelog entries ``(key, value)`` into state, a batch at a time, in
        changelog order (call :meth:`restored` once all are in); return the partitions
        touched. A value None is a tombstone of changelog partition ``partition`` (the
        state under its key is forgotten); without ``partition`` tombstones are skipped.

        Entries of components whose state is not in store maps also go to the
        partition's local store at its next image (``from_store``: they come from it)."""
        touched: set[int] = set()
        # consecutive entries per component, handed over together (Component.restore_many)
        pending: dict[tuple[int, str], list[tuple[list, list]]] = {}
        # (partition, key head) -> where its entries go (see _route): an email key's head
        # is its tenant, so a batch has a few routes for thousands of entries
        routes: dict[tuple[int, str], tuple[int, list, PartitionDB | None, PartitionState]] = {}
        loads = orjson.loads
        for key, value in entries:
            parsed = loads(key)
            head = parsed[0]
            if value is None:
                if partition is None or head == POSITION_TAG:
                    continue
                ps = self.partitions.get(partition)
                if ps is None:
                    continue  # nothing restored there yet: nothing to forget
                self._flush_joins(pending)
                routes.clear()
                tag = head if head in ps.by_tag and head else ""
                if tag:
                    ps.by_tag[head].forget(parsed[1:])
                elif not head.startswith("\x00"):
                    ps.email.forget(parsed)
                if ps.db is not None and tag in ps.logged and not from_store:
                    ps.db.log_pending[key] = None
                touched.add(partition)
                continue
            p = value[0]
            route = routes.get((p, head))
            if route is None:
                route = routes[(p, head)] = self._route(p, head, pending, from_store)
                touched.add(p)
            kind, items, logged, ps = route
            if kind == _EMAIL:
                items.append((parsed, value[1:]))
            elif kind == _TAGGED:
                items.append((parsed[1:], value[1:]))
            elif kind == _POSITION:
                topic = parsed[1]
                ps.positions[topic] = max(ps.positions.get(topic, 0), value[1])
                continue
            else:
                continue  # a tag from a newer version; its owner will rebuild it
            if logged is not None:
                logged.log_pending[key] = value
        self._flush_joins(pending)
        return touched

    def _route(
        self,
        p: int,
        head: str,
        pending: dict[tuple[int, str], list[tuple[list, list]]],
        from_store: bool,
    ) -> tuple[int, list, PartitionDB | None, PartitionState]:
        """Where :meth:`join` puts the entries of partition ``p`` whose key starts with
        ``head``: (kind, the component's pending list, the store that logs them, the
        partition's state)."""
        ps = self.partitions.get(p) or self.state(p)
        if head == POSITION_TAG:
            return _POSITION, [], None, ps
        if head in ps.by_tag and head:
            kind, tag = _TAGGED, head
        elif not head.startswith("\x00"):
            kind, tag = _EMAIL, ""
        else:
            return _UNKNOWN, [], None, ps
        logged = ps.db if ps.db is not None and tag in ps.logged and not from_store else None
        return kind, pending.setdefault((p, tag), []), logged, ps

    def _flush_joins(self, pending: dict[tuple[int, str], list[tuple[list, list]]]) -> None:
        for (p, tag), items in pending.items():
            self.partitions[p].by_tag[tag].restore_many(items)
        pending.clear()

    def stats(self) -> dict[str, Any]:
        """Where the state entries are (``sluice status``)."""
        if self.store is None:
            return {"kind": "memory"}
        return {"kind": "rocksdb", **self.store.stats()}


def decode_entry(key: bytes, value: bytes | None) -> tuple[str, list | None]:
    """A changelog record as :meth:`Engine.join` takes it (the bytes ChangelogWriter
    writes: JSON of the key's JSON string, JSON of the value; no value: a tombstone)."""
    return orjson.loads(key), (None if value is None else orjson.loads(value))


def changelog_key(*parts: object, tag: str = "") -> str:
    """Changelog key: JSON, so no separator inside an id can collide; tag first if any.

    The text of ``json.dumps(..., ensure_ascii=False)`` (what every changelog written so
    far holds, and compaction needs a key's bytes unchanged), built from orjson's strings
    when every part is a string, an int or None — orjson escapes each code point exactly
    as the stdlib does (``tests/unit/test_engine_keys.py`` checks all of them) — at a
    third of the cost: it runs once per changed entry at every checkpoint."""
    items = (tag, *parts) if tag else parts
    out = []
    for part in items:
        kind = type(part)
        if kind is str:
            out.append(orjson.dumps(part).decode())
        elif kind is int:
            out.append(str(part))
        elif part is None:
            out.append("null")
        else:  # floats, bools, dates, lists...: the stdlib's own text
            return json.dumps(list(items), ensure_ascii=False)
    return "[" + ", ".join(out) + "]"
