"""A rebuild's fast path (streams/restore.py ``rebuild``: batches joined with
``restore_many``, row keys and tallies computed column by column from ``Rollup.fields``,
direct-mode maps over RocksDB that skip keys they never wrote) against the pure-Python
reference: every changelog entry joined alone with ``Component.restore`` into dicts.

The changelog is a real workload's (dev.workload.mixed_workload, shuffled, checkpointed
often so keys repeat), with tombstones (a re-key's), erased leads, and a memory budget far
below the state, so most entries leave memory and come back.
"""

from __future__ import annotations

import random
import zlib
from functools import partial

import orjson
import pytest

from dev.changelog import MemoryChangelog
from dev.workload import mixed_workload
from sluice.privacy import Erasure, Registry, lead_ref
from streams.engine import POSITION_TAG, Engine, default_components, state_schema
from streams.restore import rebuild
from streams.rollups import (
    EMAIL_ROLLUPS,
    LEAD,
    TENANT,
    WARMUP_ROLLUPS,
    AttributionRollups,
    _Columns,
)
from streams.spill import Budget, SpillMap
from streams.store import Changelog, Identity, PartitionDB, StateStore
from topics.taxonomy import family_of

PARTITIONS = 2
WINDOW_MS = 3 * 86_400_000


def _changelog(window_ms: int | None) -> dict[int, list[tuple[bytes, bytes | None]]]:
    """Each partition's changelog records (the bytes ChangelogWriter writes)."""
    events = list(mixed_workload(emails=1500, seed=31).events)
    random.Random(8).shuffle(events)
    engine = Engine(partial(default_components, window_ms=window_ms))
    log: dict[int, list[tuple[bytes, bytes | None]]] = {p: [] for p in range(PARTITIONS)}
    rng = random.Random(9)
    for i, event in enumerate(events):
        p = zlib.crc32(event["tenant_id"].encode()) % PARTITIONS
        family = family_of(event["event_type"])
        engine.apply(p, f"events.{family}", i, family, event)
        if i % 400 == 399:
            for part, key, value in engine.snapshot().changelog:
                log[part].append((orjson.dumps(key), _value(value)))
                # now and then a re-key's tombstone: the state moved away (and may come back)
                if value is not None and not key.startswith('["\\u0000') and rng.random() < 0.02:
                    log[part].append((orjson.dumps(key), None))
    for part, key, value in engine.snapshot().changelog:
        log[part].append((orjson.dumps(key), _value(value)))
    return log


def _value(value: list | None) -> bytes | None:
    return None if value is None else orjson.dumps(value)


def _erasures(log: dict[int, list], share: float = 0.1) -> Registry:
    """A registry naming some of the workload's leads erased."""
    registry = Registry()
    rng = random.Random(10)
    for records in log.values():
        for k, v in records:
            if v is None:
                continue
            key, value = orjson.loads(orjson.loads(k)), orjson.loads(v)
            if key[0].startswith("\x00") or value[1 + LEAD] is None or rng.random() > share:
                continue
            ref = lead_ref(key[0], value[1 + LEAD])
            registry.add(Erasure(key[0], ref, f"erase-{ref}", 0))
    return registry


def _per_entry(engine: Engine, partition: int, records: list) -> None:
    """The reference: each record decoded and joined alone, through Component.restore."""
    ps = engine.state(partition)
    for k, v in records:
        key = orjson.loads(orjson.loads(k))
        head = key[0]
        if head == POSITION_TAG:
            continue
        tag = head if head in ps.by_tag and head else ""
        parts = key[1:] if tag else key
        if v is None:
            ps.by_tag[tag].forget(parts)
            continue
        ps.by_tag[tag].restore(parts, orjson.loads(v)[1:])
    engine.restored([partition])


def _contents(engine: Engine, partition: int) -> dict:
    """Every attribution component's states and rows with their tallies (dicts, in full)."""
    out = {}
    for component in engine.partitions[partition].components:
        if isinstance(component, AttributionRollups):
            out[(component.tag, "states")] = {k: list(v) for k, v in component.states.items()}
            for table, rows in component.rows.items():  # counters, then tallies
                out[(component.tag, table)] = dict(rows.items())
    return out


def _rows(engine: Engine) -> dict:
    """The OLAP rows every snapshot hands out until none is left (the rewrite)."""
    rows: dict = {}
    while not (ckpt := engine.snapshot()).empty():
        for table, items in ckpt.rows.items():
            layout = engine.layouts[table]
            n = len(layout.key_columns) + (1 if layout.sharded else 0)
            for r in items:
                rows[(table, *r[:n])] = tuple(r[n:-2] if layout.versioned else r[n:])
        engine.unpersisted(ckpt)
    return rows


@pytest.mark.parametrize("window_ms", [None, WINDOW_MS])
def test_a_rebuild_equals_the_per_entry_reference(tmp_path, window_ms):
    log = _changelog(window_ms)
    registry = _erasures(log)
    assert len(registry) > 10
    components = partial(default_components, window_ms=window_ms, registry=registry)
    schema = state_schema(components, f"window_ms={window_ms}")
    store = StateStore(tmp_path, 150, Identity("app", PARTITIONS, schema, "changelog"))
    fast = Engine(components, store, registry=registry)
    slow = Engine(components, registry=registry)
    for p, records in log.items():
        assert sum(v is None for _, v in records) > 5  # tombstones in the way
        rebuild(fast, MemoryChangelog(records, 333), p, 0, len(records))  # type: ignore[arg-type]
        _per_entry(slow, p, records)
        assert _contents(fast, p) == _contents(slow, p)
    assert store.budget.written > 3 * store.budget.capacity  # most of it went to disk
    assert _rows(fast) == _rows(slow)
    fast.close()
    # the image it wrote holds the same (reopened as a worker would)
    store = StateStore(tmp_path, 150, Identity("app", PARTITIONS, schema, "changelog"))
    again = Engine(components, store, registry=registry)
    for p, records in log.items():
        assert again.open(p, Changelog(0, len(records), 7 * 86_400_000)).reused  # type: ignore[union-attr]
        assert _contents(again, p) == _contents(slow, p)
    again.close()


def test_rollup_fields_compute_what_rollup_key_and_tallies_do():
    """Rollup.fields (a rebuild's columns) and Rollup.key / tally functions (one state at
    a time) agree on every state of a workload, emails and warm-ups."""
    events = mixed_workload(emails=800, seed=33).events
    engine = Engine(partial(default_components, window_ms=WINDOW_MS))
    for i, event in enumerate(events):
        family = family_of(event["event_type"])
        engine.apply(0, f"events.{family}", i, family, event)
    ps = engine.partitions[0]
    warmup = ps.by_tag["\x00warmup"]
    for component, rollups in ((ps.email, EMAIL_ROLLUPS), (warmup, WARMUP_ROLLUPS)):
        sent = [(k[0], s) for k, s in component.states.items() if s[0] is not None]
        assert len(sent) > 100
        columns = _Columns([t for t, _ in sent], [s for _, s in sent])
        for rollup in rollups:
            assert rollup.fields[0] == TENANT
            assert columns.keys(rollup.fields, rollup.needs) == [rollup.key(t, s) for t, s in sent]
            for (_, f), fn in zip(rollup.tallies, rollup.tally_fns, strict=True):
                assert columns.get(f) == [fn(s) for _, s in sent]


def test_a_rebuilding_map_asks_rocksdb_only_for_keys_it_wrote(tmp_path, monkeypatch):
    db = PartitionDB(tmp_path / "0", 0, Budget(10), direct=True)
    m = db.map("m")
    for i in range(100):
        m[("k", i)] = [i]
    assert m.written is not None and m.disk
    asked: list = []
    real = SpillMap._db

    def spy(self):
        rdict = real(self)

        class Spy:
            def get(self, keys, *a):
                asked.append(keys)
                return rdict.get(keys, *a)

        return Spy()

    monkeypatch.setattr(SpillMap, "_db", spy)
    fresh = [("new", i) for i in range(2000)]
    assert m.get_many(fresh) == [None] * 2000
    assert sum(len(a) if isinstance(a, list) else 1 for a in asked) < 20  # false positives
    monkeypatch.undo()
    assert m.get_many([("k", 3), ("new", 1)]) == [[3], None]
    del m[("k", 4)]
    assert ("k", 4) not in m and m.get(("k", 5)) == [5] and len(m) == 99
    assert {k: v for k, v in m.items()} == {("k", i): [i] for i in range(100) if i != 4}
    db.close()
    # a scratch store's maps (a backfill's, for hours) keep no filter
    store = StateStore(tmp_path / "s", memory_items=10, scratch=True)
    m = store.scratch_db(0).map("m")
    for i in range(100):
        m[("k", i)] = [i]
    assert m.disk and m.written is None and m.get(("k", 1)) == [1]
    store.close()


def test_a_rebuilt_store_becomes_an_image_of_what_memory_holds(tmp_path):
    """Direct mode keeps no set of changed keys; when the store becomes an image, what is
    in memory is the next cut."""
    db = PartitionDB(tmp_path / "0", 0, Budget(10), direct=True)
    m = db.map("m")
    for i in range(30):
        m[("k", i)] = [i]
    assert not m.changed
    db.flush()
    db.imaged()
    assert m.written is None and m.changed == set(m.hot) and m.hot
    cut = m.cut()
    assert len(cut.puts) == len(m.hot)
    db.close()
