"""State beyond memory (streams/spill.py): a RocksDB tier that must change no answer."""

from __future__ import annotations

import fcntl
import os
import random
import time
import zlib
from datetime import date
from functools import partial

import pytest

from dev.workload import mixed_workload
from streams.engine import Engine, default_components
from streams.spill import SpillStore
from topics.taxonomy import family_of


@pytest.fixture
def store(tmp_path):
    s = SpillStore(tmp_path / "spill", memory_items=10)
    yield s
    s.close()


def test_entries_beyond_the_budget_go_to_disk_and_come_back_changed(store):
    m = store.map()
    keys = [("t1", f"c{i}", date(2026, 11, 1 + i % 3)) for i in range(40)] + [("t1", None, None)]
    for i, k in enumerate(keys):
        m[k] = [i]
    assert store.hot <= store.capacity
    assert m.cold > 0 and len(m) == len(keys)
    assert store.stats()["on_disk"] == m.cold
    # the oldest went to disk: reading one brings it back, and a change to it sticks
    first = keys[0]
    assert first not in m.hot and first in m
    m[first].append("changed")
    for k in keys[1:]:  # pushes it out again
        m.get(k)
    assert m[first] == [0, "changed"]
    # every key in exactly one tier; iteration gives the keys back exactly (dates, None)
    assert sorted(m, key=repr) == sorted(keys, key=repr)
    want = {k: ([0, "changed"] if k == first else [i]) for i, k in enumerate(keys)}
    assert dict(m.items()) == want
    assert m.get(("t1", "nope", None)) is None and ("t1", "nope", None) not in m


def test_set_delete_and_clear_cover_both_tiers(store):
    empty, m, other = store.map(), store.map(), store.map()  # ordered so equality would err
    for i in range(30):
        m[("k", i)] = i
        other[("o", i)] = -i
    on_disk = next(k for k in (("k", i) for i in range(30)) if k not in m.hot)
    m[on_disk] = "new"  # replacing an entry on disk leaves one copy
    assert len(m) == 30 and m[on_disk] == "new"
    del m[("k", 29)]
    with pytest.raises(KeyError):
        del m[("k", 29)]
    assert len(m) == 29
    store.forget(m)
    assert len(m) == 0 and m.get(on_disk) is None
    assert any(x is empty for x in store.maps), "forget() removes that map, not an equal one"
    # the other map's entries, on disk or not, are untouched
    assert {k: other[k] for k in list(other)} == {("o", i): -i for i in range(30)}


def test_a_directory_left_by_a_dead_process_is_removed(tmp_path):
    root = tmp_path / "spill"
    live = SpillStore(root, memory_items=10)
    dead, young = root / "spill-dead", root / "spill-young"
    for d in (dead, young):
        d.mkdir()
        (d / "owner.lock").write_text("")
    os.utime(dead, (time.time() - 3600, time.time() - 3600))
    os.utime(live.dir, (time.time() - 3600, time.time() - 3600))
    other = SpillStore(root, memory_items=10)
    assert not dead.exists()
    assert young.exists(), "its process may be about to lock it"
    assert live.dir.exists(), "a living worker's directory must stay"
    with (live.dir / "owner.lock").open("a") as f, pytest.raises(BlockingIOError):
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    other.close()
    live.close()
    assert not live.dir.exists()


def _feed(engine: Engine, events, checkpoint_every: int, requeue_every: int):
    """Apply events over 3 partitions, snapshot every N (requeue some); the last value of
    every row and changelog key, as the OLAP and the compacted changelog would keep them."""
    rows, changelog = {}, {}
    for i, event in enumerate(events):
        partition = zlib.crc32(event["tenant_id"].encode()) % 3
        family = family_of(event["event_type"])
        engine.apply(partition, f"events.{family}", i, family, event)
        if i % checkpoint_every == checkpoint_every - 1:
            ckpt = engine.snapshot()
            if (i // checkpoint_every) % requeue_every == 1:
                engine.requeue(ckpt)  # a failed checkpoint: the next one carries it all
                continue
            _keep(engine, ckpt, rows, changelog)
    _keep(engine, engine.snapshot(), rows, changelog)
    return rows, changelog


def _keep(engine, ckpt, rows, changelog):
    for table, items in ckpt.rows.items():
        n = len(engine.layouts[table].key_columns)
        versioned = engine.layouts[table].versioned
        for r in items:
            rows[(table, *r[:n])] = tuple(r[n:-2] if versioned else r[n:])
    for _, key, value in ckpt.changelog:
        changelog[key] = value


def test_an_engine_whose_state_mostly_lives_on_disk_computes_the_same(tmp_path):
    wl = mixed_workload(emails=1500, seed=11)
    events = list(wl.events)
    random.Random(3).shuffle(events)  # any order: the state is a semilattice
    memory = Engine()
    spill = SpillStore(tmp_path / "spill", memory_items=200)
    disk = Engine(partial(default_components, new_map=spill.map), spill)
    try:
        expected = _feed(memory, events, 700, 4)
        got = _feed(disk, events, 700, 4)
        assert spill.stats()["written_to_disk"] > 5 * len(events) // 10
        assert spill.stats()["on_disk"] > spill.stats()["in_memory"]
        assert got[0] == expected[0]
        assert got[1] == expected[1]
        # a restore from that changelog into a spilling engine rebuilds the same rows
        restored = Engine(partial(default_components, new_map=spill.map), None)
        entries = list(got[1].items())
        half = len(entries) // 2
        touched = restored.join(entries[:half]) | restored.join(entries[half:] + entries[:50])
        restored.restored(touched)
        again: dict = {}
        _keep(restored, restored.snapshot(), again, {})
        assert {k: again[k] for k in again} == {k: expected[0][k] for k in again}
        rollups = {"campaign_analytics", "mailbox_analytics", "sequence_step_analytics"}
        rollups |= {"lead_analytics", "billing_analytics", "warmup_analytics"}
        assert {k for k in expected[0] if k[0] in rollups} == {k for k in again if k[0] in rollups}
        # a partition that moves away leaves nothing behind, in memory or on disk
        before = spill.stats()["on_disk"]
        restored.drop(list(restored.partitions))
        disk.drop([0])
        assert spill.stats()["on_disk"] < before
        disk.drop(list(disk.partitions))
        assert spill.stats()["on_disk"] == 0 and spill.hot == 0
    finally:
        disk.close()
    assert not spill.dir.exists()


def test_after_a_restore_rows_are_rewritten_a_batch_per_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr("streams.rollups.REWRITE_BATCH", 300)
    wl = mixed_workload(emails=1500, seed=12)
    memory = Engine()
    expected, changelog = _feed(memory, wl.events, 10_000, 1_000)
    spill = SpillStore(tmp_path / "spill", memory_items=200)
    restored = Engine(partial(default_components, new_map=spill.map), spill)
    try:
        restored.restore(list(changelog.items()))
        got: dict = {}
        sizes = []
        while not (ckpt := restored.snapshot()).empty():
            # the email component of each partition: at most one batch per checkpoint
            sizes.append(max(sum(map(len, t[""].rows.values())) for t in ckpt.taken.values()))
            _keep(restored, ckpt, got, {})
        assert len(sizes) > 3 and max(sizes) <= 300, sizes
        assert {k: v for k, v in got.items() if k in expected} == {
            k: expected[k] for k in got if k in expected
        }
        rollups = ("campaign_analytics", "lead_analytics", "billing_analytics")
        assert {k for k in expected if k[0] in rollups} <= set(got)
    finally:
        restored.close()
