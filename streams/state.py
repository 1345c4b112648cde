"""The contract every piece of per-partition state follows (pure logic, no I/O).

A :class:`Component` owns one kind of state of one Kafka partition (email attribution,
warm-up attribution, plan changes, the audit chain, ...). The engine feeds it decoded
events and, at each checkpoint, asks it for what must be persisted:

* **changelog entries** ``(key parts, value)``: enough to rebuild the state after a crash
  or a rebalance (:meth:`Component.restore`, then :meth:`Component.restored`);
* **OLAP rows** ``table -> {row key: value columns}``: absolute values, so rewriting a row
  is harmless (tables are ReplacingMergeTree keyed on the row key).

Why components look like this
-----------------------------
Delivery is at-least-once, so every component must make redelivery a no-op: state is a
join-semilattice (merging is idempotent and commutative) or a set keyed by event id.
Checkpoint order is changelog → OLAP → ack, and a checkpoint either completes or is
handed back with :meth:`Component.requeue`; so a component learns that the previous
checkpoint succeeded when it is asked to :meth:`Component.take` again without a requeue
in between (the audit chain relies on that to mark its rows written).

Erasure (docs/erasure.md): when the registry names a lead erased, the engine calls
:meth:`Component.erase` on every partition's components; a component holding anything
that identifies that lead removes it (its changelog entries are rewritten or
tombstoned at the next take) while keeping every aggregate that is not personal data.

Several components may fill one table (``billing_analytics`` gets sends from email
attribution and plan changes from business events): each declares the value columns it
provides, and the engine joins their parts on the row key.

A *sharded* table (:attr:`TablePart.sharded`) holds one row per key and partition: the
engine appends the partition number (the ``shard`` column) to the component's row key, so
partitions that each count some of a key's emails never overwrite each other; the OLAP
view combines them (:mod:`sluice.olap.catalog`). Components never see the shard.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

RowKey = tuple
ChangelogKey = list  # JSON-able key parts; the engine prefixes the component's tag
ChangelogValue = list  # JSON-able; the engine prefixes the partition number

#: Makes one named map of a component's state (``"email/states"``, ...). The name is
#: stable across processes: the partition's local store (:mod:`streams.store`) keeps each
#: map under it, so a restarted worker reopens the map instead of rebuilding it.
#: ``new_map(name, json=False)``: a map named ``name``; ``json``: its keys are tuples of
#: strings, integers and None and its values are what JSON gives back exactly (a store map
#: then keeps them as JSON: :class:`streams.spill.SpillMap`)
MapFactory = Callable[..., MutableMapping]


def memory_map(name: str = "", json: bool = False) -> dict:
    """The default :data:`MapFactory`: a plain dict (``SLUICE_STATE_STORE=memory``)."""
    return {}


def insert_new(m: MutableMapping, items: list[tuple[Any, Any]]) -> None:
    """Add entries whose keys are in no tier of ``m`` (a lookup just missed), at once."""
    bulk = getattr(m, "insert_new", None)
    if bulk is None:
        m.update(items)
    else:
        bulk(items)


def get_many(m: Mapping, keys: list[Any]) -> list[Any]:
    """``[m.get(k) for k in keys]``; a store map reads what is on disk in one go."""
    bulk = getattr(m, "get_many", None)
    return [m.get(k) for k in keys] if bulk is None else bulk(keys)


def peek(m: Mapping, key: Any, default: Any = None) -> Any:
    """Read ``m[key]`` for reading only: a store map (:class:`streams.spill.SpillMap`)
    then neither takes it into memory nor counts it as changed."""
    reader = getattr(m, "peek", None)
    return m.get(key, default) if reader is None else reader(key, default)


@dataclass(frozen=True)
class TablePart:
    """The columns one component fills in one OLAP table.

    ``versioned`` tables get ``updated`` and ``_version`` appended to every row (their rows
    change over time; ReplacingMergeTree keeps the highest version). Immutable fact rows
    (the audit chain) are not versioned: a rewrite is byte-identical. ``sharded`` tables
    get the partition number appended to the key (see the module docstring).
    """

    table: str
    key_columns: tuple[str, ...]
    value_columns: tuple[str, ...]
    versioned: bool = True
    sharded: bool = False


@dataclass
class Taken:
    """What one component handed to one checkpoint (given back to it on failure)."""

    #: ``value`` None is a tombstone: the key goes from the compacted changelog for good
    changelog: list[tuple[ChangelogKey, ChangelogValue | None]] = field(default_factory=list)
    rows: dict[str, dict[RowKey, tuple]] = field(default_factory=dict)
    # component-private bookkeeping for requeue (which keys went out, ...)
    token: Any = None
    #: records for the erasure registry topic (:class:`sluice.privacy.Erasure`)
    registry: list[Any] = field(default_factory=list)

    def empty(self) -> bool:
        return not self.changelog and not any(self.rows.values())


class Component(ABC):
    """One kind of per-partition state. Not thread-safe: owned by the worker's loop."""

    #: changelog key tag (``""``: untagged legacy keys, only the email state uses it)
    tag: str = ""
    #: taxonomy families whose events :meth:`apply` wants
    families: frozenset[str] = frozenset()

    @abstractmethod
    def parts(self) -> tuple[TablePart, ...]:
        """The OLAP tables (and columns) this component fills."""

    @abstractmethod
    def apply(self, event: Mapping) -> bool:
        """Merge one decoded event of one of :attr:`families`; return True if anything changed.

        Redelivery must be a no-op (and return False where the component can tell).
        """

    def settle(self) -> None:  # noqa: B027
        """The end of a batch of :meth:`apply`: finish what was deferred to it (most
        components defer nothing; every other method settles first on its own)."""

    @abstractmethod
    def take(self) -> Taken:
        """Hand out everything changed since the last take (clears the dirty sets)."""

    @abstractmethod
    def requeue(self, taken: Taken) -> None:
        """A checkpoint failed: mark what ``taken`` carried dirty again (current values win)."""

    def value(self, table: str, key: RowKey) -> tuple:
        """Current value columns of one row (for tables filled by several components)."""
        raise KeyError(table)

    # Optional hooks: components without changelog state (pure event → row mappings)
    # keep the defaults.
    def restore(self, key: ChangelogKey, value: ChangelogValue) -> None:  # noqa: B027
        """Join one changelog entry (tag and partition already stripped) into the state."""

    def restore_many(self, entries: Sequence[tuple[ChangelogKey, ChangelogValue]]) -> None:
        """:meth:`restore` of many entries, in order (a rebuild hands thousands at once;
        a component may join them faster than one by one)."""
        for key, value in entries:
            self.restore(key, value)

    def forget(self, key: ChangelogKey) -> None:  # noqa: B027
        """A changelog tombstone: the state under ``key`` was deleted (an erasure), or
        moved to the partition its new key maps to (``sluice topics rekey``). Joined over a local
        store that still holds it, it must go here too; components whose changelog never
        carries one keep this default, which ignores it (as a rebuild from the changelog
        alone does: compaction removes what the tombstone replaced)."""

    def restored(self) -> None:  # noqa: B027
        """After a batch of :meth:`restore`: reconcile, and mark every row to be rewritten
        (the OLAP may lag the changelog) without resending what came from the changelog.

        After :meth:`reopened`, only the rows the restored entries changed."""

    def keeps_state_in_store(self) -> bool:
        """True when this component's state lives in maps of the partition's local store
        (made by its :data:`MapFactory`): a restart reopens them, so the store need not
        keep the component's changelog entries beside them."""
        return False

    def reopened(self) -> None:  # noqa: B027
        """The state came back from the partition's local store, as it was at a checkpoint
        whose rows are all in the OLAP. What :meth:`restore` joins until :meth:`restored`
        (the changelog written after that checkpoint) marks the rows it changes, and only
        those, to be rewritten. Components that do not keep their state in the store keep
        this default: their entries are restored from the store and then from the
        changelog as after a rebuild."""

    def rewrite_pending(self) -> bool:
        """True while rows restored from the changelog are still being rewritten a batch
        per checkpoint (a restart meanwhile must rewrite them all again)."""
        return False

    def mark_rewrites(self, limit: int) -> int:
        """Mark up to ``limit`` more rows of the rewrite :meth:`rewrite_pending` reports
        dirty (the snapshot takes them); return how many."""
        return 0

    def erase(self, tenant: str, refs: Set[str]) -> None:  # noqa: B027
        """``tenant``'s leads whose :func:`sluice.privacy.lead_ref` is in ``refs`` are
        erased: forget whatever identifies them (a component without lead data: nothing)."""

    def erase_many(self, by_tenant: Mapping[str, Set[str]]) -> None:
        """:meth:`erase` for several tenants at once (components whose state must be
        walked to find the leads walk it once)."""
        for tenant, refs in by_tenant.items():
            self.erase(tenant, refs)

    def holds(self, tenant: str, lead: str) -> dict[str, int]:
        """What still identifies one lead here, by kind (``sluice privacy verify``)."""
        return {}

    def stats(self) -> dict[str, int]:
        """Sizes of the state, for ``sluice status``."""
        return {}

    def close(self) -> None:  # noqa: B027
        """The partition moved away: release what the state holds outside the process."""


class DirtyRows:
    """Dirty row keys per table: the bookkeeping most components share."""

    def __init__(self, tables: Iterable[str]) -> None:
        self.keys: dict[str, set[RowKey]] = {t: set() for t in tables}

    def add(self, table: str, key: RowKey) -> None:
        self.keys[table].add(key)

    def update(self, table: str, keys: Iterable[RowKey]) -> None:
        self.keys[table].update(keys)

    def take(self) -> dict[str, list[RowKey]]:
        """Snapshot and clear, in a stable order (tidy inserts, stable tokens)."""
        out = {t: sorted_keys(keys) for t, keys in self.keys.items() if keys}
        for keys in self.keys.values():
            keys.clear()
        return out


def sort_key(key: RowKey) -> tuple:
    """Order row keys of mixed types (str, date, None) deterministically."""
    return tuple("" if part is None else str(part) for part in key)


def sorted_keys(keys: Iterable[RowKey]) -> list[RowKey]:
    """Row keys in a deterministic order: their own where they compare (the common case,
    several times faster than :func:`sort_key`'s strings), else :func:`sort_key`'s (a
    ``None`` or mixed types in one column)."""
    keys = list(keys)
    try:
        keys.sort()
    except TypeError:
        keys.sort(key=sort_key)
    return keys
