"""The worker's local state store: one RocksDB database per partition, kept across restarts.

Layout (``SLUICE_DATA_DIR/state/<app id>/<partition>/``, a RocksDB database each)::

    \\x00marker                 JSON: how far this store is consistent with the changelog
                               (see :class:`Marker`), and what it was made for
    m<map name>\\xff<key JSON>   an entry of one state map: the JSON of its value for the
                               attribution states (``email/states``, ``warmup/states``:
                               the key is the disk key's JSON), else pickle((key, value))
                               (``email/rows/lead_analytics``: its counters, then its
                               tallies; ``email/rows/campaign_analytics``, ...)
    l<changelog key>           JSON value: the last changelog entry of a component whose
                               state is small and kept in memory (audit chain, plan
                               changes, incidents), replayed into it at start-up

Why a restart may reuse an older copy
-------------------------------------
Every piece of state merges idempotently and commutatively (a join-semilattice), so a
store that is *behind* the changelog is brought up to date by joining the changelog
written after its marker: what it already holds changes nothing, what it lacks is added.
Reading more than needed is harmless; reading less is not, so the marker only ever
names an offset before which every changelog entry is in the store:

* the store (state maps, small components' entries, positions) and its marker are written
  in **one atomic RocksDB write batch** (with the write-ahead log), after a checkpoint
  flushed the changelog and wrote the OLAP rows of the same snapshot
  (:mod:`streams.checkpoint`): the image is exactly that snapshot, the marker the
  changelog offset after the last entry this worker had written and had acknowledged;
* between checkpoints the image is never written (:mod:`streams.spill`), so a kill -9 at
  any moment leaves the last image and its marker;
* changelog entries another member wrote concurrently (a zombie past its session timeout)
  carry only effects of events that member could not commit, which the partition's owner
  applies again from the committed offset: skipping them loses nothing.

Deletions are the exception to "join the rest": a changelog tombstone (erasure) must be
seen by a store that holds the deleted key, and compaction drops tombstones
``delete.retention.ms`` after writing them. A marker older than that, or below the
changelog's first offset, means the tail may have lost deletes: rebuild in full.

When a store cannot be used it is deleted and rebuilt from the whole changelog
(:mod:`streams.restore`), with one log line saying why (:data:`REASONS`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson
from rocksdict import (
    AccessType,
    BlockBasedOptions,
    DBCompressionType,
    Options,
    Rdict,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

from streams.spill import Budget, MapCut, SpillMap

log = logging.getLogger("sluice.store")

#: The on-disk format of a partition store. Bump it when the layout above changes; a store
#: of another format is rebuilt (the schema fingerprint covers the components' shapes).
#: 2: the attribution states are JSON, not pickles.
STORE_FORMAT = 2

MARKER_KEY = b"\x00marker"
SCRATCH_MAX_AGE_S = 2 * 86_400
MAP_TAG = b"m"
LOG_TAG = b"l"
SEP = b"\xff"  # never in UTF-8: map names cannot run into their keys

#: Why a store is rebuilt in full instead of reused (the log line names one).
REASONS = {
    "missing": "no local store",
    "unreadable": "the local store cannot be opened",
    "no_marker": "the local store has no marker (a rebuild was interrupted)",
    "bad_marker": "the local store's marker cannot be read",
    "format": "the local store has another format",
    "app_id": "the local store belongs to another app id",
    "partition": "the local store holds another partition",
    "partitions": "the local store was made for another partition count",
    "schema": "the local store holds state of another schema",
    "changelog": "the local store follows another changelog topic",
    "ahead": "the local store's marker is beyond the changelog's end (topic recreated?)",
    "retention": "the changelog no longer holds everything after the local store's marker",
    "tombstones": "the local store is older than the changelog's delete.retention.ms "
    "(deletes may have been compacted away)",
}


class StoreBusy(RuntimeError):
    """Another process holds a partition's store (RocksDB's lock)."""


@dataclass(frozen=True)
class Identity:
    """What a store must have been made for to be reused."""

    app_id: str
    partitions: int
    schema: str  # fingerprint of the components' state (see Engine.schema)
    changelog: str  # the changelog topic's name


@dataclass
class Marker:
    """The record that makes a partition's store usable, written with every image.

    ``offset``: every entry of changelog partition ``partition`` before it is in the
    store. ``written_ms``: wall clock of the write (checked against delete.retention.ms).
    ``sizes``: live entries per map. ``positions``: next event offset applied, per topic.
    ``rewrite``: rows restored from a full rebuild were still being rewritten.
    """

    format: int
    app_id: str
    partition: int
    partitions: int
    schema: str
    changelog: str
    offset: int
    written_ms: int
    sizes: dict[str, int] = field(default_factory=dict)
    positions: dict[str, int] = field(default_factory=dict)
    rewrite: bool = False
    changelog_id: str | None = None  # the topic's id (a recreated topic has another)

    def dumps(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def loads(cls, raw: bytes) -> Marker:
        data = orjson.loads(raw)
        return cls(**data)


@dataclass(frozen=True)
class Changelog:
    """What Kafka says about one changelog partition when its store is opened."""

    low: int  # first retained offset
    high: int  # next offset to be written
    delete_retention_ms: int
    topic_id: str | None = None


@dataclass
class StoreCut:
    """A partition's changes since its last image, serialized at a checkpoint's snapshot."""

    maps: dict[str, MapCut] = field(default_factory=dict)
    log: list[tuple[str, list | None]] = field(default_factory=list)
    positions: dict[str, int] = field(default_factory=dict)
    rewrite: bool = False
    db: PartitionDB | None = None  # the database it was cut from
    marker: Marker | None = None  # filled in by PartitionDB.write
    # at the snapshot: every changelog entry before ``base`` was in the state; settled:
    # the partition was not joining the changelog (streams.engine.Engine.persist)
    base: int = 0
    settled: bool = False


#: Memtable memory of every partition store of a process together: what one store could
#: hold on its own before (two 32 MiB memtables). Without a shared bound a worker held up
#: to 64 MiB per partition it owns: the stores are written once per checkpoint, and state
#: of a few hundred thousand emails never filled a memtable, so it stayed in memory.
MEMTABLE_BUDGET = 64 * 1024 * 1024
_WRITE_BUFFERS = WriteBufferManager(MEMTABLE_BUDGET, False)  # False: never stalls a writer


def _options() -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_compression_type(DBCompressionType.lz4())
    # several partitions per worker: modest memtables (the image is written in batches of
    # one checkpoint's changes; lookups go through the block cache and bloom filters)
    options.set_write_buffer_size(32 * 1024 * 1024)
    options.set_max_write_buffer_number(2)
    options.set_write_buffer_manager(_WRITE_BUFFERS)  # one per process, for all its stores
    table = BlockBasedOptions()
    table.set_bloom_filter(10, False)  # a miss (a new email) must not read a block
    options.set_block_based_table_factory(table)
    return options


class PartitionDB:
    """One partition's RocksDB database: its maps, small components' entries, marker.

    ``direct``: a rebuild (or a scratch store) in progress; entries leave memory by being
    written, and nothing here is trusted until the first image writes the marker
    (:meth:`streams.engine.Engine.rebuilt`, then a checkpoint).
    """

    def __init__(
        self,
        path: Path,
        partition: int,
        budget: Budget,
        *,
        direct: bool,
        scratch: bool = False,
    ) -> None:
        self.path = path
        self.partition = partition
        self.budget = budget
        self.direct = direct
        self.scratch = scratch
        self.no_wal = WriteOptions()
        self.no_wal.disable_wal = True
        self.wal = WriteOptions()  # an image must survive a kill -9: through the WAL
        self.db: Rdict | None = _open(path)
        self.maps: dict[str, SpillMap] = {}
        self.marker: Marker | None = None
        self.changelog_id: str | None = None  # the changelog topic's id, when Kafka said
        self.unflushed = False  # direct writes not yet in files (see flush)
        # small components' entries joined from the changelog since the last cut (a
        # rebuild, a tail): the image must get them too, though no snapshot hands them out
        self.log_pending: dict[str, list | None] = {}
        self._log_flying: dict[str, list | None] = {}

    def read_marker(self) -> Marker | None:
        assert self.db is not None
        raw = self.db.get(MARKER_KEY)
        return None if raw is None else Marker.loads(raw)

    def map(self, name: str, json: bool = False) -> SpillMap:
        """The map ``name`` (made once per name; reopened with its size from the marker);
        ``json``: its entries are kept as JSON (see :class:`streams.spill.SpillMap`)."""
        if name in self.maps:
            raise ValueError(f"partition {self.partition}: two maps named {name!r}")
        size = self.marker.sizes.get(name, 0) if self.marker is not None else 0
        m = SpillMap(self, name, MAP_TAG + name.encode() + SEP, size, json=json)
        self.maps[name] = m
        self.budget.maps.append(m)
        return m

    def forget(self, m: SpillMap) -> None:
        """``m``'s component is closed: its entries leave memory (a scratch store's go)."""
        if self.scratch:
            m.clear()
        else:
            m.release()
        self.budget.maps = [x for x in self.budget.maps if x is not m]  # identity
        self.maps.pop(m.name, None)

    def log_entries(self) -> Iterator[tuple[str, list]]:
        """The small components' changelog entries kept here (key JSON, value)."""
        assert self.db is not None
        for k, raw in self.db.items(from_key=LOG_TAG):
            if not k.startswith(LOG_TAG):
                break
            yield k[len(LOG_TAG) :].decode(), orjson.loads(raw)

    # -- images ---------------------------------------------------------------------------
    def cut(
        self, log_entries: Sequence[tuple[str, list | None]], positions: Mapping, rewrite: bool
    ) -> StoreCut:
        """Everything changed since the last image (under the state lock): the maps'
        changes, the small components' entries (joined ones, then ``log_entries``, the
        snapshot's), the positions."""
        log = {**self.log_pending, **dict(log_entries)}
        self.log_pending = {}
        self._log_flying = log
        return StoreCut(
            maps={name: m.cut() for name, m in self.maps.items()},
            log=list(log.items()),
            positions=dict(positions),
            rewrite=rewrite,
            db=self,
        )

    def write(self, cut: StoreCut, identity: Identity, offset: int) -> Marker:
        """Write ``cut`` and its marker in one atomic batch, through the write-ahead log
        (blocking: run in a thread). ``offset``: every changelog entry of the partition
        before it is in the cut's state."""
        assert self.db is not None and not self.direct
        marker = self._marker(identity, offset, cut)
        batch = WriteBatch(raw_mode=True)
        for m in cut.maps.values():
            for key in m.deletes:
                batch.delete(key)
            for key, value in m.puts:
                batch.put(key, value)
        for log_key, log_value in cut.log:
            if log_value is None:
                batch.delete(LOG_TAG + log_key.encode())
            else:
                batch.put(LOG_TAG + log_key.encode(), orjson.dumps(log_value))
        batch.put(MARKER_KEY, marker.dumps())
        self.db.write(batch, self.wal)
        cut.marker = marker
        return marker

    def stored(self, cut: StoreCut) -> None:
        """``cut`` is on disk (on the loop, after :meth:`write`)."""
        self._log_flying = {}
        for m in self.maps.values():
            m.stored()
        if cut.marker is not None:
            self.marker = cut.marker
        self.budget.unblock()

    def abandoned(self) -> None:
        """The last cut was not written: its entries are changed again."""
        self.log_pending = {**self._log_flying, **self.log_pending}
        self._log_flying = {}
        for m in self.maps.values():
            m.abandoned()

    def imaged(self) -> None:
        """Direct mode ends (a rebuild's entries are flushed): the next image writes what
        is still in memory, and the marker then makes the store usable."""
        assert not self.unflushed, "flush() first"
        self.direct = False
        for m in self.maps.values():
            m.imaged()

    def flush(self) -> None:
        """Entries written without the write-ahead log (direct mode) into files (blocking)."""
        assert self.db is not None
        self.db.flush(True)
        self.unflushed = False

    def _marker(self, identity: Identity, offset: int, cut: StoreCut) -> Marker:
        return Marker(
            format=STORE_FORMAT,
            app_id=identity.app_id,
            partition=self.partition,
            partitions=identity.partitions,
            schema=identity.schema,
            changelog=identity.changelog,
            changelog_id=self.changelog_id,
            offset=offset,
            written_ms=int(time.time() * 1000),
            sizes={name: m.size for name, m in cut.maps.items()},
            positions=cut.positions,
            rewrite=cut.rewrite,
        )

    def stats(self) -> dict[str, int]:
        return {"entries": sum(m.size for m in self.maps.values())}

    def close(self) -> None:
        """Release memory and close the database (its files stay, unless scratch)."""
        for m in list(self.maps.values()):
            self.forget(m)
        if self.db is not None:
            self.db.close()
            self.db = None
        if self.scratch:
            shutil.rmtree(self.path, ignore_errors=True)


def _open(path: Path, attempts: int = 20) -> Rdict:
    """Open (or create) the database; another process holding it is waited for a few
    seconds (a worker that is still exiting), then :class:`StoreBusy`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        try:
            return Rdict(str(path), options=_options(), access_type=AccessType.read_write())
        except Exception as exc:
            if "lock" not in str(exc).lower():
                raise
            if attempt == attempts - 1:
                raise StoreBusy(f"{path}: held by another process ({exc})") from None
            time.sleep(0.5)
    raise AssertionError("unreachable")


@dataclass
class Opened:
    """How a partition's store was opened: reused (with the marker) or new (and why)."""

    db: PartitionDB
    reused: bool
    reason: str | None = None  # a key of REASONS when not reused
    detail: str = ""


class StateStore:
    """A worker's partition stores under ``root`` (``SLUICE_DATA_DIR/state/<app id>``),
    and the memory budget they share.

    ``scratch``: a store that is never reused (backfill, tests): a temporary directory,
    removed at :meth:`close`.
    """

    def __init__(
        self,
        root: str | Path,
        memory_items: int,
        identity: Identity | None = None,
        *,
        scratch: bool = False,
    ) -> None:
        self.budget = Budget(memory_items)
        self.identity = identity
        self.scratch = scratch
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        if scratch:
            # what a killed run left behind (a live one is younger: backfills take hours)
            for old in root.glob("scratch-*"):
                try:
                    if time.time() - old.stat().st_mtime > SCRATCH_MAX_AGE_S:
                        shutil.rmtree(old, ignore_errors=True)
                except OSError:
                    pass
        self.root = Path(tempfile.mkdtemp(prefix="scratch-", dir=root)) if scratch else root
        self.open_dbs: dict[int, PartitionDB] = {}

    @classmethod
    def for_app(cls, data_dir: str | Path, identity: Identity, memory_items: int) -> StateStore:
        """The worker's store: ``<data dir>/state/<app id>``."""
        name = identity.app_id.replace("/", "_").replace("\x00", "_")
        return cls(Path(data_dir) / "state" / name, memory_items, identity)

    def path(self, partition: int) -> Path:
        return self.root / str(partition)

    def scratch_db(self, partition: int) -> PartitionDB:
        """A database that is rebuilt from nothing and never reused."""
        db = PartitionDB(self.path(partition), partition, self.budget, direct=True, scratch=True)
        self.open_dbs[partition] = db
        return db

    def open(self, partition: int, changelog: Changelog | None) -> Opened:
        """Open partition ``partition``'s store: reused when its marker holds up against
        ``changelog`` (None: nothing known, never reused), else emptied for a rebuild."""
        if self.scratch:
            return Opened(self.scratch_db(partition), reused=False, reason="missing")
        assert self.identity is not None
        path = self.path(partition)
        reason, detail = ("missing", "") if not path.exists() else (None, "")
        db: PartitionDB | None = None
        if reason is None:
            try:
                db = PartitionDB(path, partition, self.budget, direct=False)
            except StoreBusy:
                raise
            except Exception as exc:
                reason, detail = "unreadable", str(exc).splitlines()[0][:200]
        if db is not None:
            try:
                marker = db.read_marker()
            except Exception as exc:
                marker, reason, detail = None, "bad_marker", str(exc)[:200]
            if marker is None and reason is None:
                reason = "no_marker"
            if marker is not None:
                reason, detail = check(marker, partition, self.identity, changelog)
            if reason is None:
                assert marker is not None
                db.marker = marker
                db.changelog_id = changelog.topic_id if changelog else marker.changelog_id
                self.open_dbs[partition] = db
                return Opened(db, reused=True)
            db.close()
        shutil.rmtree(path, ignore_errors=True)
        db = PartitionDB(path, partition, self.budget, direct=True)
        db.changelog_id = changelog.topic_id if changelog else None
        self.open_dbs[partition] = db
        return Opened(db, reused=False, reason=reason, detail=detail)

    def close_partition(self, partition: int) -> None:
        db = self.open_dbs.pop(partition, None)
        if db is not None:
            db.close()

    def reap(self, keep: Iterable[int], max_age_ms: int) -> list[int]:
        """Delete stores of partitions this worker does not hold whose marker is older
        than ``max_age_ms`` (they could never be reused), or that have none."""
        removed = []
        now = time.time() * 1000
        keep = set(keep) | set(self.open_dbs)
        for path in self.root.iterdir() if self.root.exists() else ():
            if not path.name.isdigit() or int(path.name) in keep:
                continue
            try:
                db = PartitionDB(path, int(path.name), Budget(2), direct=False)
            except StoreBusy:
                continue
            except Exception:
                db = None
            try:
                marker = db.read_marker() if db is not None else None
            except Exception:
                marker = None
            if db is not None:
                db.close()
            if marker is None or now - marker.written_ms > max_age_ms:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(int(path.name))
        return removed

    def stats(self) -> dict[str, int]:
        b = self.budget
        entries = sum(db.stats()["entries"] for db in self.open_dbs.values())
        return {
            "in_memory": b.hot,
            "on_disk": max(0, entries - b.hot),
            "entries": entries,
            "written_to_disk": b.written,
            "memory_items": b.capacity,
        }

    def close(self) -> None:
        for partition in list(self.open_dbs):
            self.close_partition(partition)
        if self.scratch:
            shutil.rmtree(self.root, ignore_errors=True)


def check(
    marker: Marker, partition: int, identity: Identity, changelog: Changelog | None
) -> tuple[str | None, str]:
    """(None, "") when a store with ``marker`` may be reused, else (reason, detail)."""
    if marker.format != STORE_FORMAT:
        return "format", f"format {marker.format}, this version writes {STORE_FORMAT}"
    if marker.app_id != identity.app_id:
        return "app_id", f"app id {marker.app_id!r}, this worker's is {identity.app_id!r}"
    if marker.partition != partition:
        return "partition", f"it holds partition {marker.partition}"
    if marker.partitions != identity.partitions:
        return "partitions", f"{marker.partitions} partitions, now {identity.partitions}"
    if marker.schema != identity.schema:
        return "schema", f"schema {marker.schema}, this version {identity.schema}"
    if marker.changelog != identity.changelog:
        return "changelog", f"{marker.changelog!r}, now {identity.changelog!r}"
    if changelog is None:
        return "retention", "the changelog's offsets are unknown"
    if (
        marker.changelog_id is not None
        and changelog.topic_id is not None
        and marker.changelog_id != changelog.topic_id
    ):
        return "changelog", "the changelog topic was recreated (another topic id)"
    if marker.offset > changelog.high:
        return "ahead", f"marker {marker.offset}, changelog ends at {changelog.high}"
    if marker.offset < changelog.low:
        return "retention", f"marker {marker.offset}, changelog starts at {changelog.low}"
    age_ms = int(time.time() * 1000) - marker.written_ms
    # only entries after the marker can have lost their tombstones: none, nothing lost
    if age_ms > changelog.delete_retention_ms and marker.offset < changelog.high:
        return (
            "tombstones",
            f"written {age_ms / 3_600_000:.1f} h ago, delete.retention.ms is "
            f"{changelog.delete_retention_ms / 3_600_000:.1f} h",
        )
    return None, ""


def describe(opened: Opened, partition: int) -> str:
    """The log line's text for a store that is rebuilt."""
    why = REASONS.get(opened.reason or "", opened.reason or "")
    return f"partition {partition}: {why}" + (f" ({opened.detail})" if opened.detail else "")
