"""State beyond memory: maps cached in memory over a RocksDB database that outlives the
process.

The worker's state grows with the emails in flight (one attribution record per email, one
``lead_analytics`` row per lead). With ``SLUICE_STATE_STORE=rocksdb`` every such map is a
:class:`SpillMap`: its entries live in a dict while they are used, and in the partition's
RocksDB database (:mod:`streams.store`, one per partition) otherwise. All maps of a worker
share one memory budget (:class:`Budget`, ``SLUICE_STATE_MEMORY_ITEMS`` entries): beyond
it the oldest entries of the largest map leave memory, and come back when an event touches
them. Cold-email traffic suits that order: an email is touched most in the hours after its
send, rarely days later.

What is on disk, and when it is written, depends on the database's mode:

* **image** (a worker's partition whose store is valid): the database is the partition's
  state *as it was at the last checkpoint that made it durable* (changelog flushed, OLAP
  rows written), with the marker that says so, written in one atomic batch
  (:meth:`SpillMap.cut` at the snapshot, :meth:`PartitionDB.write` after the OLAP write).
  Memory is a write-back cache over it: an entry changed since the last cut (or handed to
  a cut not yet written) stays in memory; only entries equal to their image leave it,
  which costs no write at all. Between checkpoints the image is never touched, so a
  kill -9 at any moment leaves a consistent image behind.
* **direct** (a rebuild from the changelog, and scratch stores: backfill, tests): nothing on
  disk counts until the rebuild ends (a store without a marker is rebuilt), so entries
  leave memory by being written straight to disk, without RocksDB's write-ahead log.
  Every entry in memory then differs from the disk (``changed`` is not kept: it is every
  key in memory, set when the map becomes an image, :meth:`SpillMap.imaged`), and a map
  of a rebuild that started empty remembers which keys it wrote in a small filter
  (:class:`Written`), so a lookup of a key it never wrote — nearly every lookup of a
  rebuild — does not ask RocksDB (measured: ~3 µs per miss, a fifth of a rebuild's CPU).

A store map is changed in place by its users, so the map cannot see every change: every
access (``get``, ``[]``, assignment) counts the entry as changed; :meth:`SpillMap.peek`
reads without that, for callers that only read.

Rule for callers: a value taken from a map is yours to mutate in place until the next
access to any map of the same budget (that access may take it out of memory). The
components in :mod:`streams.rollups` mutate what they fetch before fetching anything else.
"""

from __future__ import annotations

import copyreg
import itertools
import logging
import pickle
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from rocksdict import Rdict, WriteBatch, WriteOptions

log = logging.getLogger("sluice.spill")

_MISSING: Any = object()


def _counter(counts: dict) -> Counter:
    """A Counter back from disk, without Counter's generic (slow) constructor."""
    tally: Counter = Counter.__new__(Counter)
    dict.update(tally, counts)
    return tally


# A Counter's own pickling (__reduce__ through its constructor) costs twice as much to load
# (measured 6.3 vs 3.5 µs per lead tally, when tallies were Counters; they are plain dicts
# now: streams.rollups.Tally). Part of the store's format (streams/store.py STORE_FORMAT).
copyreg.pickle(Counter, lambda c: (_counter, (dict(c),)))


#: bits of a :class:`Written` filter (4 MiB): ~2.5 % false positives at 850,000 keys, the
#: largest map of a 5,000,000-email rebuild's partition (one bit per key; more keys only
#: raise the rate, never the answer)
WRITTEN_BITS = 1 << 25


class Written:
    """The keys a direct-mode map has written to disk (a Bloom filter of one hash over
    ``hash(key)``, this process's hashes): no false negatives, some false positives."""

    __slots__ = ("bits",)

    def __init__(self) -> None:
        self.bits = bytearray(WRITTEN_BITS >> 3)

    def add_all(self, keys: list[Hashable]) -> None:
        bits, mask = self.bits, WRITTEN_BITS - 1
        for h in map(mask.__and__, map(hash, keys)):
            bits[h >> 3] |= 1 << (h & 7)

    def may_hold(self, key: Hashable) -> bool:
        h = hash(key) & (WRITTEN_BITS - 1)
        return bool(self.bits[h >> 3] >> (h & 7) & 1)


class Owner(Protocol):
    """The database a map lives in (:class:`streams.store.PartitionDB`)."""

    db: Rdict | None
    budget: Budget
    direct: bool  # entries leave memory by being written (no image yet, or a scratch store)
    scratch: bool  # never reused (backfill, tests): stays direct
    no_wal: WriteOptions
    unflushed: bool  # set by a direct write: it is not in files until the owner flushes

    def forget(self, m: SpillMap) -> None: ...


class Budget:
    """The memory budget every map of one worker shares (``SLUICE_STATE_MEMORY_ITEMS``)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 2:
            raise ValueError("memory_items must be at least 2")
        self.capacity = capacity
        self.hot = 0  # entries in memory, all maps together
        self.written = 0  # entries written to disk when they left memory (direct mode)
        self.maps: list[SpillMap] = []
        # Nothing could leave memory at the last try (every entry waits for a checkpoint):
        # don't scan again before the next write-back, or each insert would rescan.
        self.blocked = False
        self._warned = False

    def make_room(self) -> None:
        """Take entries out of memory until the maps hold no more than 90 % of the budget."""
        need = self.hot - (self.capacity * 9) // 10
        while need > 0:
            freed = 0
            for m in sorted(self.maps, key=SpillMap.in_memory, reverse=True):
                if need <= 0 or m.in_memory() <= 1:
                    break
                n = m.evict(min(need, max(1, m.in_memory() // 2)))
                freed += n
                need -= n
            if not freed:
                self.blocked = True
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "state: %d entries in memory, budget %d: the rest wait for a "
                        "checkpoint to reach disk (a checkpoint is failing, or the budget is "
                        "below one checkpoint's changes)",
                        self.hot,
                        self.capacity,
                    )
                return

    def unblock(self) -> None:
        """An image was written: the entries it holds may leave memory again, and do now
        when the maps are over budget (an idle worker makes no room otherwise)."""
        self.blocked = False
        if self.hot > self.capacity:
            self.make_room()


@dataclass
class MapCut:
    """One map's changes since the previous cut, serialized at the snapshot."""

    puts: list[tuple[bytes, bytes]] = field(default_factory=list)
    deletes: list[bytes] = field(default_factory=list)
    size: int = 0


class SpillMap(MutableMapping):
    """A dict over one partition's RocksDB database (see the module doc).

    Keys are tuples of strings, numbers, None and dates (the disk key is the map's prefix
    and their JSON); values anything picklable. On disk an entry is the pickle of
    ``(key, value)``, so iteration gives back the keys exactly.

    ``json``: a map whose keys are tuples of strings, integers and None and whose values
    are what JSON gives back exactly (lists, strings, integers, None: the attribution
    states, which come from the changelog's JSON): on disk an entry is then the JSON of
    its value alone, the key read back from the disk key (measured: 20,000 states
    encoded into a write batch in 0.2 µs each, 0.65 µs as pickles of ``(key, value)``).
    """

    __slots__ = (
        "store",
        "name",
        "prefix",
        "hot",
        "changed",
        "removed",
        "flying",
        "flying_removed",
        "size",
        "disk",
        "written",
        "json",
        "_absent",
    )

    def __init__(
        self, store: Owner, name: str, prefix: bytes, size: int = 0, json: bool = False
    ) -> None:
        self.store = store
        self.json = json
        self.name = name
        self.prefix = prefix
        self.hot: dict[Hashable, Any] = {}
        # image mode: keys whose value in memory may differ from the image (every one of
        # them is in memory), keys deleted since the image; and the same handed to the cut
        # being written (they may not leave memory, or be read from disk, before it lands)
        self.changed: set[Hashable] = set()
        self.removed: set[Hashable] = set()
        self.flying: set[Hashable] = set()
        self.flying_removed: set[Hashable] = set()
        self.size = size  # live entries, memory and disk together
        self.disk = size > 0  # the database may hold entries of this map
        # direct mode, from an empty map: the keys on disk (None: ask RocksDB)
        self.written: Written | None = None
        # the last key a lookup found nowhere: setting it next needs no disk check
        self._absent: Hashable = _MISSING

    def in_memory(self) -> int:
        return len(self.hot)

    def _disk_key(self, key: Hashable) -> bytes:
        return self.prefix + orjson.dumps(key)

    def _db(self) -> Rdict:
        db = self.store.db
        assert db is not None, f"{self.name}: its store is closed"
        return db

    def _gone(self, key: Hashable) -> bool:
        """Deleted, with the image not yet told (so the disk copy is stale), or never
        written (direct mode)."""
        if self.written is not None and not self.written.may_hold(key):
            return True
        return key in self.removed or key in self.flying_removed

    def imaged(self) -> None:
        """The database leaves direct mode (a rebuild's store becomes an image): what is
        in memory is not in the image yet, and lookups ask RocksDB again."""
        self.changed = set(self.hot)
        self.written = None

    # -- lookups ------------------------------------------------------------------------
    def get(self, key: Hashable, default: Any = None) -> Any:
        value = self.hot.get(key, _MISSING)
        direct = self.store.direct
        if value is not _MISSING:
            if not direct:
                self.changed.add(key)  # the caller may change it in place
            return value
        if not self.disk or self._gone(key):
            return default
        raw = self._db().get(self._disk_key(key))
        if raw is None:
            self._absent = key
            return default
        value = self._value(raw)
        self._add(key, value)
        if not direct:
            self.changed.add(key)
        return value

    def get_many(self, keys: list[Hashable]) -> list[Any]:
        """``[self.get(k) for k in keys]`` (None for a missing key), the keys not in memory
        read from disk in one RocksDB multi-get: a rebuild's bulk path."""
        hot = self.hot
        out = list(map(hot.get, keys, itertools.repeat(_MISSING, len(keys))))
        direct = self.store.direct
        if not direct:
            self.changed.update(k for k, v in zip(keys, out, strict=True) if v is not _MISSING)
        if not self.disk:
            return [None if v is _MISSING else v for v in out]
        written = self.written
        if written is not None:  # a rebuild: the filter, then RocksDB for what it may hold
            bits, mask, removed = written.bits, WRITTEN_BITS - 1, self.removed
            missing = [i for i, v in enumerate(out) if v is _MISSING]
            hashes = map(mask.__and__, map(hash, map(keys.__getitem__, missing)))
            wanted = [
                i
                for i, h in zip(missing, hashes, strict=True)
                if bits[h >> 3] >> (h & 7) & 1 and keys[i] not in removed
            ]
        else:
            gone = self._gone
            wanted = [i for i, v in enumerate(out) if v is _MISSING and not gone(keys[i])]
        if wanted:
            raws = self._db().get([self._disk_key(keys[i]) for i in wanted])
            loaded = 0
            load = self._value
            for i, raw in zip(wanted, raws, strict=True):
                if raw is None:
                    continue
                value = load(raw)
                # no room made in between: every value handed out stays in memory until the
                # caller's next access (the rule of this module), whatever the budget says
                hot[keys[i]] = value
                if not direct:
                    self.changed.add(keys[i])
                out[i] = value
                loaded += 1
            self.store.budget.hot += loaded
        return [None if v is _MISSING else v for v in out]

    def peek(self, key: Hashable, default: Any = None) -> Any:
        """The value, for reading only: not taken into memory, not counted as changed."""
        value = self.hot.get(key, _MISSING)
        if value is not _MISSING:
            return value
        if not self.disk or self._gone(key):
            return default
        raw = self._db().get(self._disk_key(key))
        return default if raw is None else self._value(raw)

    def _value(self, raw: bytes) -> Any:
        """An entry's value from its bytes on disk."""
        return orjson.loads(raw) if self.json else pickle.loads(raw)[1]

    def _blobs(self, keys: list[Hashable], values: Iterable[Any]) -> list[bytes]:
        """The bytes on disk of entries ``keys[i]``: ``values[i]``, to be kept a while."""
        if self.json:
            # copied: orjson's bytes are a larger allocation shrunk in place, and many of
            # them alive at once are slow (measured: 20,000 states encoded and kept, 2.7 µs
            # each; each copied, or put into a write batch at once, 0.2-0.8 µs)
            return [bytes(memoryview(b)) for b in map(orjson.dumps, values)]
        return list(map(pickle.dumps, zip(keys, values, strict=True), itertools.repeat(5)))

    def __getitem__(self, key: Hashable) -> Any:
        value = self.hot.get(key, _MISSING)
        if value is not _MISSING:  # get()'s first lines: the hot path's, one call less
            if not self.store.direct:
                self.changed.add(key)  # the caller may change it in place
            return value
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        if key in self.hot:
            return True
        if not self.disk or self._gone(key):  # type: ignore[arg-type]
            return False
        return self._db().get(self._disk_key(key)) is not None  # type: ignore[arg-type]

    # -- changes ------------------------------------------------------------------------
    def __setitem__(self, key: Hashable, value: Any) -> None:
        hot = self.hot
        direct = self.store.direct
        if key in hot:
            hot[key] = value
            if not direct:
                self.changed.add(key)
            return
        if key in self.removed:
            self.removed.discard(key)  # the next cut writes it over the stale disk copy
            live = False
        elif key == self._absent or not self.disk or self._gone(key):
            live = False
        else:
            live = self._db().get(self._disk_key(key)) is not None
        self._absent = _MISSING
        if not live:
            self.size += 1
        self._add(key, value)
        if not direct:
            self.changed.add(key)

    def insert_new(self, items: list[tuple[Hashable, Any]]) -> None:
        """Add entries whose keys a lookup just found nowhere (a rebuild's bulk path: one
        call instead of one assignment per entry)."""
        if not items:
            return
        self.hot.update(items)
        if not self.store.direct:
            self.changed.update(key for key, _ in items)
        self.size += len(items)
        budget = self.store.budget
        budget.hot += len(items)
        self._absent = _MISSING
        if budget.hot >= budget.capacity and not budget.blocked:
            budget.make_room()  # the oldest go first: the entries just added go last

    def _add(self, key: Hashable, value: Any) -> None:
        budget = self.store.budget
        if budget.hot >= budget.capacity and not budget.blocked:
            budget.make_room()  # before adding: the new entry is never the one taken out
        self.hot[key] = value
        budget.hot += 1

    def __delitem__(self, key: Hashable) -> None:
        if key in self.hot:
            del self.hot[key]
            self.store.budget.hot -= 1
            self.changed.discard(key)
        elif key not in self:
            raise KeyError(key)
        if self.store.direct:
            if self.disk and not self._gone(key):
                self._db().delete(self._disk_key(key), self.store.no_wal)
                self.store.unflushed = True
        else:
            self.removed.add(key)
        self.size -= 1

    def evict(self, n: int) -> int:
        """Take up to ``n`` of the oldest entries out of memory; return how many left.

        Image mode: only entries equal to their image (nothing to write). Direct mode:
        the oldest, each written to disk.
        """
        hot = self.hot
        if self.store.direct:
            victims = list(itertools.islice(hot, n))
            batch = WriteBatch(raw_mode=True)
            put, pop, prefix, jdumps = batch.put, hot.pop, self.prefix, orjson.dumps
            # each entry's bytes go into the batch at once (see _blobs)
            if self.json:
                for key in victims:
                    put(prefix + jdumps(key), jdumps(pop(key)))
            else:
                pdumps = pickle.dumps
                for key in victims:
                    put(prefix + jdumps(key), pdumps((key, pop(key)), 5))
            self._db().write(batch, self.store.no_wal)
            self.store.unflushed = True
            if not self.disk and self.written is None and not self.store.scratch:
                # a rebuild's map, empty before: the filter knows every key on disk (not
                # a scratch store's: a backfill's maps would hold 4 MiB each for hours)
                self.written = Written()
            if self.written is not None:
                self.written.add_all(victims)
            self.disk = True
            self.store.budget.written += len(victims)
        else:
            busy = self.changed
            flying = self.flying
            victims = []
            for key in hot:
                if key not in busy and key not in flying:
                    victims.append(key)
                    if len(victims) >= n:
                        break
            for key in victims:
                del hot[key]
        self.store.budget.hot -= len(victims)
        return len(victims)

    # -- the image ----------------------------------------------------------------------
    def cut(self) -> MapCut:
        """Serialize what changed since the last cut (at a checkpoint's snapshot, under the
        state lock); those entries stay in memory until :meth:`stored` or
        :meth:`abandoned`. One cut at a time."""
        assert not self.flying and not self.flying_removed, f"{self.name}: a cut is in flight"
        hot, prefix = self.hot, self.prefix
        changed = list(self.changed)
        blobs = self._blobs(changed, map(hot.__getitem__, changed))
        cut = MapCut(
            puts=list(zip(map(prefix.__add__, map(orjson.dumps, changed)), blobs, strict=True)),
            deletes=[prefix + orjson.dumps(k) for k in self.removed],
            size=self.size,
        )
        self.flying, self.changed = self.changed, set()
        self.flying_removed, self.removed = self.removed, set()
        return cut

    def stored(self) -> None:
        """The last cut is in the image."""
        if self.flying:
            self.disk = True
        self.flying = set()
        self.flying_removed = set()

    def abandoned(self) -> None:
        """The last cut was not written: what it carried is changed again."""
        hot = self.hot
        self.changed.update(k for k in self.flying if k in hot)
        self.removed.update(k for k in self.flying_removed if k not in hot)
        self.flying = set()
        self.flying_removed = set()

    def release(self) -> None:
        """Leave memory (the partition moved away or the worker stops); the disk stays."""
        self.store.budget.hot -= len(self.hot)
        self.hot.clear()
        self.changed.clear()
        self.flying.clear()

    def clear(self) -> None:
        """Every entry goes, in memory and on disk (a scratch store's partition moved)."""
        self.release()
        self.removed.clear()
        self.flying_removed.clear()
        if self.disk:
            self._db().delete_range(self.prefix, _after(self.prefix), self.store.no_wal)
            self.disk = False
        self.written = None
        self.size = 0

    # -- iteration (restores and rare scans; never takes entries into memory) -----------
    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[Hashable]:
        for key, _ in self.items():
            yield key

    def items(self) -> Iterator[tuple[Hashable, Any]]:  # type: ignore[override]
        """Every entry, reading the disk as it goes (memory stays bounded for any size).

        The map may change meanwhile (a restore's rewrite walks it across checkpoints):
        every key present throughout comes at least once (some twice), others may or may
        not.
        """
        yield from list(self.hot.items())
        if not self.disk:
            return
        prefix = self.prefix
        start = len(prefix)
        # a RocksDB iterator reads the snapshot it was opened on, whatever is written later
        for k, raw in self._db().items(from_key=prefix):
            if not k.startswith(prefix):
                break
            if self.json:
                key, value = tuple(orjson.loads(k[start:])), orjson.loads(raw)  # type: ignore[index]
            else:
                key, value = pickle.loads(raw)  # the key exactly as it was
            if self._gone(key):
                continue
            now = self.hot.get(key, _MISSING)
            yield key, (value if now is _MISSING else now)


def _after(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix``."""
    return (int.from_bytes(prefix, "big") + 1).to_bytes(len(prefix), "big")
