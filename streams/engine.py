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

Erasure (docs/erasure.md): the engine holds the erasure registry (:mod:`sluice.privacy`),
which the worker fills before any partition is restored and follows while it runs.
:meth:`Engine.erase` hands newly erased leads to every partition's components; rows a
checkpoint writes are filtered against the registry (:meth:`Engine.scrub_rows`), and
:meth:`Engine.erasure_work` hands the checkpoint what must leave the world outside: the
erased leads' OLAP rows, and the per-lead secrets to forget once PostHog was asked.

Changelog format: keys are JSON lists — ``[tenant, email_id]`` for email states (the
first release's format), ``["\\x00pos", topic, partition]`` for positions, and
``[component tag, ...]`` for every other component. Values are lists whose first element
is the partition. Entries with a tag this version does not know are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sluice.privacy import Erasure, Registry
from streams.compliance import AuditLog, SensitiveAccess
from streams.erasure import ErasureRequests, Forget, LeadKeys
from streams.incidents import SystemEvents
from streams.rollups import (
    BILLING_SENDS,
    DAY_MS,
    ERASABLE_TABLES,
    BillingPlans,
    EmailRollups,
    WarmupRollups,
)
from streams.state import Component, Taken, sort_key

if TYPE_CHECKING:
    from sluice.settings import Settings
    from streams.spill import SpillStore

POSITION_TAG = "\x00pos"
VERSION_COLUMNS = ("updated", "_version")


def default_components(
    window_ms: int | None = None,
    new_map: Callable[[], MutableMapping] = dict,
    registry: Registry | None = None,
    lead_keys: bool = False,
) -> list[Component]:
    """Every component of one partition, wired together (the worker's configuration).

    ``window_ms``: the attribution window of email engagement (None: unbounded);
    ``new_map``: the maps that grow with emails and leads (see :mod:`streams.spill`);
    ``registry``: the erased leads (None: no erasure is ever consulted);
    ``lead_keys``: mint a secret per lead (only worth it when PostHog is on; secrets
    restored from the changelog are erased either way).
    """
    erased = registry.erased if registry is not None else None
    email = EmailRollups(window_ms=window_ms, new_map=new_map, erased=erased)
    billing_rows = email.rows[BILLING_SENDS.table]
    components: list[Component] = [
        email,
        WarmupRollups(new_map=new_map),
        # a late plan change re-dates months that only have sends: it must see those rows
        BillingPlans(other_keys=billing_rows.keys),
        AuditLog(),
        SensitiveAccess(),
        SystemEvents(),
        ErasureRequests(),
        LeadKeys(registry, new_map=new_map, minting=lead_keys),
    ]
    return components


@dataclass(frozen=True)
class TableLayout:
    """How one OLAP table's rows are assembled from the components that fill it."""

    name: str
    key_columns: tuple[str, ...]
    parts: tuple[tuple[str, tuple[str, ...]], ...]  # (component tag, value columns)
    versioned: bool

    @property
    def columns(self) -> list[str]:
        values = [c for _, cols in self.parts for c in cols]
        return [*self.key_columns, *values, *(VERSION_COLUMNS if self.versioned else ())]


def layouts(components: Iterable[Component]) -> dict[str, TableLayout]:
    """Join the components' table parts; parts of one table must agree on key and kind."""
    found: dict[str, TableLayout] = {}
    for component in components:
        for part in component.parts():
            layout = found.get(part.table)
            entry = (component.tag, part.value_columns)
            if layout is None:
                found[part.table] = TableLayout(
                    part.table, part.key_columns, (entry,), part.versioned
                )
                continue
            if (layout.key_columns, layout.versioned) != (part.key_columns, part.versioned):
                raise ValueError(f"components disagree on the key of {part.table}")
            found[part.table] = TableLayout(
                part.table, layout.key_columns, (*layout.parts, entry), layout.versioned
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


@dataclass
class Checkpoint:
    """What one checkpoint must persist; handed back to :meth:`Engine.requeue` on failure."""

    changelog: list[tuple[int, str, list | None]] = field(default_factory=list)  # None: tombstone
    rows: dict[str, list[list]] = field(default_factory=dict)
    # partition -> component tag -> what the component handed out
    taken: dict[int, dict[str, Taken]] = field(default_factory=dict)
    positions: set[int] = field(default_factory=set)
    #: erasure requests for the registry topic (durable before the commit)
    registry: list[Erasure] = field(default_factory=list)

    def empty(self) -> bool:
        return not self.changelog and not self.rows and not self.registry


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
        components: Callable[[], Sequence[Component]] | None = None,
        spill: SpillStore | None = None,
        registry: Registry | None = None,
    ) -> None:
        """``spill``: the disk tier ``components`` put their maps in (closed by :meth:`close`);
        ``registry``: the erased leads ``components`` consult (default: the components
        made here get this engine's registry)."""
        self.erasures = registry if registry is not None else Registry()
        if components is None:
            components = partial(default_components, registry=self.erasures)
        self.factory = components
        probe = components()
        self.layouts = layouts(probe)
        for component in probe:
            component.close()  # its maps, if they live in a spill store
        self.partitions: dict[int, PartitionState] = {}
        self.spill = spill
        # tenant -> references whose OLAP rows are still to be purged
        self.pending_purge: dict[str, set[str]] = {}

    def state(self, partition: int) -> PartitionState:
        ps = self.partitions.get(partition)
        if ps is None:
            ps = self.partitions[partition] = PartitionState(partition, self.factory())
        return ps

    # -- the hot path -----------------------------------------------------------------
    def apply(self, partition: int, topic: str, offset: int, family: str, event: Mapping) -> None:
        """Apply one decoded event of ``family`` read at ``topic[partition]@offset``."""
        ps = self.state(partition)
        for component in ps.by_family.get(family, ()):
            component.apply(event)
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
            taken = {c.tag: c.take() for c in ps.components}
            ckpt.taken[partition] = taken
            for tag, t in taken.items():
                for key, value in t.changelog:
                    ckpt.changelog.append(
                        (
                            partition,
                            changelog_key(*key, tag=tag),
                            None if value is None else [partition, *value],
                        )
                    )
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
    def for_settings(cls, settings: Settings, registry: Registry | None = None) -> Engine:
        """The engine the worker runs with these settings (backfill uses the same)."""
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
        from streams.spill import SpillStore

        spill = SpillStore(
            Path(settings.sluice_data_dir) / "spill", settings.sluice_state_memory_items
        )
        return cls(partial(components, new_map=spill.map), spill, registry=registry)

    # -- erasure ----------------------------------------------------------------------
    def erase(self, entries: Iterable[Erasure]) -> int:
        """Leads the registry newly names erased: every partition forgets them, and their
        OLAP rows are purged at the next checkpoint. Return how many were new."""
        new: dict[str, set[str]] = {}
        for entry in entries:
            if self.erasures.add(entry):
                new.setdefault(entry.tenant, set()).add(entry.ref)
        for tenant, refs in new.items():
            for ps in self.partitions.values():
                for component in ps.components:
                    component.erase(tenant, refs)
            self.pending_purge.setdefault(tenant, set()).update(refs)
        return sum(len(refs) for refs in new.values())

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

    def join(self, entries: Iterable[tuple[str, list]]) -> set[int]:
        """Join changelog entries into state, a batch at a time (call :meth:`restored`
        once all are in); return the partitions touched."""
        touched: set[int] = set()
        for key, value in entries:
            if value is None:
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


def changelog_key(*parts: object, tag: str = "") -> str:
    """Changelog key: JSON, so no separator inside an id can collide; tag first if any."""
    return json.dumps([tag, *parts] if tag else list(parts), ensure_ascii=False)
