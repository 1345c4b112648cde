"""State beyond memory: maps whose least recently added entries live in RocksDB.

The worker's state grows with the emails in flight (one attribution record per email, one
``lead_analytics`` row per lead). With ``SLUICE_STATE_STORE=rocksdb`` every such map is a
:class:`SpillMap`: its entries live in a plain dict until the worker holds more than
``SLUICE_STATE_MEMORY_ITEMS`` entries in all maps together; then the oldest half of the
largest map is written to RocksDB (through ``rocksdict``, the binding faust-streaming's
``rocksdb://`` store uses) and read back, into memory, when an event touches it again.
Cold-email traffic suits that order: an email is touched most in the hours after its
send, rarely days later.

The disk tier is a cache, not a source of truth: the changelog topic is (see
:mod:`streams.engine`). Each worker process opens a private directory under
``<SLUICE_DATA_DIR>/spill``, never reads one left by an earlier process, and removes
directories no living process holds (a ``flock`` on ``owner.lock`` tells). So writes skip
RocksDB's write-ahead log and a crash loses nothing the changelog does not have.

Rule for callers: a value taken from a map is yours to mutate in place until the next
access to any map of the same store (that access may write it to disk). The components
in :mod:`streams.rollups` mutate what they fetch before fetching anything else.
"""

from __future__ import annotations

import fcntl
import itertools
import pickle
import shutil
import struct
import tempfile
import time
from collections.abc import Hashable, Iterator, MutableMapping
from pathlib import Path
from typing import IO, Any

import orjson
from rocksdict import (
    AccessType,
    BlockBasedOptions,
    DBCompressionType,
    Options,
    Rdict,
    WriteBatch,
    WriteOptions,
)

_MISSING: Any = object()
_LOCK = "owner.lock"


class SpillStore:
    """One worker's disk tier and its memory budget, shared by all its maps."""

    def __init__(self, root: str | Path, memory_items: int) -> None:
        if memory_items < 2:
            raise ValueError("memory_items must be at least 2")
        self.capacity = memory_items
        self.hot = 0  # entries in memory, all maps together
        self.spilled = 0  # entries written to disk so far (a counter for metrics)
        self.maps: list[SpillMap] = []
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        reap(root)
        self.dir = Path(tempfile.mkdtemp(prefix="spill-", dir=root))
        self._lock: IO[str] | None = (self.dir / _LOCK).open("w")
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_compression_type(DBCompressionType.lz4())
        options.set_write_buffer_size(64 * 1024 * 1024)
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)  # a miss (a new email) must not read a block
        options.set_block_based_table_factory(table)
        self.db: Rdict | None = Rdict(
            str(self.dir / "db"), options=options, access_type=AccessType.read_write()
        )
        no_wal = WriteOptions()
        no_wal.disable_wal = True  # a cache: the changelog is the durable copy
        self.db.set_write_options(no_wal)
        self._prefixes = itertools.count()

    def map(self) -> SpillMap:
        """A new, empty map whose entries count against this store's budget."""
        m = SpillMap(self, struct.pack(">Q", next(self._prefixes)))
        self.maps.append(m)
        return m

    def make_room(self) -> None:
        """Write entries to disk until the maps hold no more than 90 % of the budget."""
        need = self.hot - (self.capacity * 9) // 10
        while need > 0:
            largest = max(self.maps, key=SpillMap.in_memory)
            n = min(need, max(1, largest.in_memory() // 2))
            if largest.in_memory() <= 1:
                return  # nothing left worth writing (every map holds one entry)
            largest.evict(n)
            need -= n

    def forget(self, m: SpillMap) -> None:
        """``m`` is discarded (its partition moved away): its entries go, memory and disk."""
        m.clear()
        self.maps = [x for x in self.maps if x is not m]  # identity: maps compare by content

    def close(self) -> None:
        """Close and remove the directory (nothing in it outlives the process)."""
        if self.db is not None:
            self.db.close()
            self.db = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def stats(self) -> dict[str, int]:
        return {
            "in_memory": self.hot,
            "on_disk": sum(m.cold for m in self.maps),
            "written_to_disk": self.spilled,
            "memory_items": self.capacity,
        }


def reap(root: Path) -> None:
    """Remove spill directories whose process is gone (their lock is free).

    A directory younger than a minute is left alone: its process may be between creating
    it and locking it (a crashed worker's is removed by a later start)."""
    for d in root.glob("spill-*"):
        try:
            if time.time() - d.stat().st_mtime < 60:
                continue
        except OSError:
            continue
        try:
            with (d / _LOCK).open("a") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a living worker's
        except OSError:
            pass  # no lock file: a directory torn down half way
        shutil.rmtree(d, ignore_errors=True)


class SpillMap(MutableMapping):
    """A dict whose oldest entries the store may move to disk (see the module doc).

    Every key is in exactly one tier. Keys are tuples of strings, numbers, None and dates
    (the disk key is their JSON); values anything picklable. On disk an entry is the pickle
    of ``(key, value)``, so iteration gives back the keys exactly.
    """

    __slots__ = ("store", "prefix", "hot", "cold", "_absent")

    def __init__(self, store: SpillStore, prefix: bytes) -> None:
        self.store = store
        self.prefix = prefix
        self.hot: dict[Hashable, Any] = {}
        self.cold = 0  # entries on disk
        # the last key a lookup found nowhere: setting it next needs no disk check
        self._absent: Hashable = _MISSING

    def in_memory(self) -> int:
        return len(self.hot)

    def _disk_key(self, key: Hashable) -> bytes:
        return self.prefix + orjson.dumps(key)

    # -- lookups ------------------------------------------------------------------------
    def get(self, key: Hashable, default: Any = None) -> Any:
        value = self.hot.get(key, _MISSING)
        if value is not _MISSING:
            return value
        if not self.cold:
            return default
        return self._load(key, default)

    def _load(self, key: Hashable, default: Any) -> Any:
        db = self.store.db
        assert db is not None
        k = self._disk_key(key)
        raw = db.get(k)
        if raw is None:
            self._absent = key
            return default
        db.delete(k)
        self.cold -= 1
        _, value = pickle.loads(raw)
        self._add(key, value)
        return value

    def __getitem__(self, key: Hashable) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        if key in self.hot:
            return True
        if not self.cold:
            return False
        assert self.store.db is not None
        return self.store.db.get(self._disk_key(key)) is not None  # type: ignore[arg-type]

    # -- changes ------------------------------------------------------------------------
    def __setitem__(self, key: Hashable, value: Any) -> None:
        if key in self.hot:
            self.hot[key] = value
            return
        if self.cold and key != self._absent and self._drop_disk(key):
            self.cold -= 1
        self._absent = _MISSING
        self._add(key, value)

    def _add(self, key: Hashable, value: Any) -> None:
        store = self.store
        if store.hot >= store.capacity:
            store.make_room()  # before adding: the new entry is never the one written out
        self.hot[key] = value
        store.hot += 1

    def _drop_disk(self, key: Hashable) -> bool:
        db = self.store.db
        assert db is not None
        k = self._disk_key(key)
        if db.get(k) is None:
            return False
        db.delete(k)
        return True

    def __delitem__(self, key: Hashable) -> None:
        if key in self.hot:
            del self.hot[key]
            self.store.hot -= 1
        elif self.cold and self._drop_disk(key):
            self.cold -= 1
        else:
            raise KeyError(key)

    def evict(self, n: int) -> None:
        """Write the ``n`` oldest in-memory entries to disk."""
        db = self.store.db
        assert db is not None
        hot = self.hot
        batch = WriteBatch(raw_mode=True)
        prefix = self.prefix
        for key in list(itertools.islice(hot, n)):
            value = hot.pop(key)
            batch.put(prefix + orjson.dumps(key), pickle.dumps((key, value), protocol=5))
        db.write(batch)
        self.cold += n
        self.store.hot -= n
        self.store.spilled += n

    def clear(self) -> None:
        self.store.hot -= len(self.hot)
        self.hot.clear()
        if self.cold:
            db = self.store.db
            assert db is not None
            db.delete_range(self.prefix, _after(self.prefix))
            self.cold = 0

    # -- iteration (restores and rare scans; never promotes) ----------------------------
    def __len__(self) -> int:
        return len(self.hot) + self.cold

    def __iter__(self) -> Iterator[Hashable]:
        for key, _ in self.items():
            yield key

    def items(self) -> Iterator[tuple[Hashable, Any]]:  # type: ignore[override]
        """Every entry, reading the disk as it goes (memory stays bounded for any size).

        The map may change meanwhile (a restore's rewrite walks it across checkpoints):
        every key present throughout comes at least once, others may or may not.
        """
        yield from list(self.hot.items())
        if not self.cold:
            return
        db = self.store.db
        assert db is not None
        prefix = self.prefix
        # a RocksDB iterator reads the snapshot it was opened on, whatever is written later
        for k, raw in db.items(from_key=prefix):
            if not k.startswith(prefix):
                break
            yield pickle.loads(raw)  # (key, value): the key exactly as it was


def _after(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix``."""
    return (int.from_bytes(prefix, "big") + 1).to_bytes(len(prefix), "big")
