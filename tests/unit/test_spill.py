"""State beyond memory (streams/spill.py): maps over RocksDB that must change no answer,
write their image only when cut, and never let an unwritten change leave memory."""

from __future__ import annotations

import logging
import random
import zlib
from datetime import date
from functools import partial

import pytest

from dev.workload import mixed_workload
from streams.engine import Engine, default_components
from streams.spill import Budget
from streams.store import PartitionDB, StateStore
from topics.taxonomy import family_of


@pytest.fixture
def scratch(tmp_path):
    store = StateStore(tmp_path, memory_items=10, scratch=True)
    db = store.scratch_db(0)
    yield db
    store.close()


@pytest.fixture
def image(tmp_path):
    """A database in image mode (a partition whose store holds a marker)."""
    db = PartitionDB(tmp_path / "0", 0, Budget(10), direct=False)
    yield db
    db.close()


def test_direct_mode_entries_beyond_the_budget_go_to_disk_and_come_back_changed(scratch):
    m = scratch.map("email/states")
    keys = [("t1", f"c{i}", date(2026, 11, 1 + i % 3)) for i in range(40)] + [("t1", None, None)]
    for i, k in enumerate(keys):
        m[k] = [i]
    assert scratch.budget.hot <= scratch.budget.capacity
    assert len(m) == len(keys) and len(m.hot) < len(keys)
    # the oldest went to disk: reading one brings it back, and a change to it sticks
    first = keys[0]
    assert first not in m.hot and first in m
    m[first].append("changed")
    for k in keys[1:]:  # pushes it out again
        m.get(k)
    assert m[first] == [0, "changed"]
    # iteration gives the keys back exactly (dates, None), each value current
    assert set(m) == set(keys)
    want = {k: ([0, "changed"] if k == first else [i]) for i, k in enumerate(keys)}
    assert dict(m.items()) == want
    assert m.get(("t1", "nope", None)) is None and ("t1", "nope", None) not in m


def test_set_delete_and_clear_cover_both_tiers(scratch):
    empty, m, other = scratch.map("a"), scratch.map("b"), scratch.map("c")
    for i in range(30):
        m[("k", i)] = i
        other[("o", i)] = -i
    on_disk = next(k for k in (("k", i) for i in range(30)) if k not in m.hot)
    m[on_disk] = "new"  # replacing an entry on disk leaves one
    assert len(m) == 30 and m[on_disk] == "new"
    del m[("k", 29)]
    with pytest.raises(KeyError):
        del m[("k", 29)]
    assert len(m) == 29 and ("k", 29) not in m
    scratch.forget(m)
    assert len(m) == 0 and m.get(on_disk) is None
    assert any(x is empty for x in scratch.budget.maps), "forget() removes that map only"
    assert {k: other[k] for k in list(other)} == {("o", i): -i for i in range(30)}


def test_image_mode_never_lets_an_unwritten_change_leave_memory(image):
    m = image.map("email/states")
    for i in range(30):
        m[("k", i)] = [i]
    # nothing written yet: every entry is a change the image lacks, so all stay (the
    # budget is soft) and nothing is on disk
    assert len(m.hot) == 30 and image.budget.blocked
    assert image.db.get(m._disk_key(("k", 0))) is None
    cut = image.cut([], {}, rewrite=False)
    assert len(cut.maps["email/states"].puts) == 30
    m[("k", 0)].append("after the cut")  # changed again while the cut is in flight
    m[("k", 30)] = [30]
    image.budget.unblock()
    m[("k", 31)] = [31]  # tries to make room: entries of the cut in flight may not go
    assert all(("k", i) in m.hot for i in range(32))
    image.write(cut, _identity(), offset=5)
    image.stored(cut)
    # the image holds the cut's values, not the change made after it
    assert image.read_marker().offset == 5
    assert m.peek(("k", 0)) == [0, "after the cut"]  # memory wins
    m[("k", 32)] = [32]  # room now: the oldest written entries leave memory, for free
    assert ("k", 1) not in m.hot and ("k", 0) in m.hot, "a change waits for the next cut"
    assert m[("k", 1)] == [1]  # read back from the image
    assert len(m) == 33
    # over budget after an image write: memory shrinks at once, idle or not
    for i in range(40, 60):
        m[("k", i)] = [i]
    assert image.budget.hot > image.budget.capacity
    cut = image.cut([], {}, rewrite=False)
    image.write(cut, _identity(), offset=6)
    image.stored(cut)
    assert image.budget.hot <= image.budget.capacity


def test_an_abandoned_cut_goes_into_the_next_one(image):
    m = image.map("m")
    m[("a",)] = 1
    m[("b",)] = 2
    first = image.cut([], {}, rewrite=False)
    image.write(first, _identity(), offset=1)
    image.stored(first)
    del m[("a",)]
    m[("b",)] = 3
    m[("c",)] = 4
    lost = image.cut([], {}, rewrite=False)
    image.abandoned()  # the checkpoint failed before its OLAP write
    assert image.read_marker().offset == 1
    m[("d",)] = 5
    again = image.cut([], {}, rewrite=False)
    assert {k for k, _ in again.maps["m"].puts} >= {k for k, _ in lost.maps["m"].puts}
    assert again.maps["m"].deletes == lost.maps["m"].deletes
    image.write(again, _identity(), offset=2)
    image.stored(again)
    m.release()  # memory gone: what is left is the image
    assert dict(m.items()) == {("b",): 3, ("c",): 4, ("d",): 5}
    assert ("a",) not in m and len(m) == 3


def test_a_deleted_key_is_not_read_back_from_a_stale_image(image):
    m = image.map("m")
    m[("a",)] = 1
    cut = image.cut([], {}, rewrite=False)
    image.write(cut, _identity(), offset=1)
    image.stored(cut)
    del m[("a",)]
    assert ("a",) not in m and m.get(("a",)) is None and m.peek(("a",)) is None
    assert list(m.items()) == []
    m[("a",)] = 2  # set again before the deletion reached the image
    assert m[("a",)] == 2 and len(m) == 1


def _identity():
    from streams.store import Identity

    return Identity(app_id="app", partitions=1, schema="s", changelog="app-changelog")


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
    store = StateStore(tmp_path, memory_items=200, scratch=True)
    disk = Engine(default_components, store)
    try:
        expected = _feed(memory, events, 700, 4)
        got = _feed(disk, events, 700, 4)
        stats = store.stats()
        assert stats["written_to_disk"] > 5 * len(events) // 10
        assert stats["on_disk"] > stats["in_memory"]
        assert got[0] == expected[0]
        assert got[1] == expected[1]
        # a restore from that changelog into a spilling engine rebuilds the same rows
        restored = Engine(partial(default_components), StateStore(tmp_path, 200, scratch=True))
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
        restored.close()
        # a partition that moves away leaves nothing behind in a scratch store
        disk.drop([0])
        assert 0 not in store.open_dbs and not store.path(0).exists()
    finally:
        disk.close()
    assert not store.root.exists()


def test_after_a_restore_rows_are_rewritten_a_batch_per_checkpoint(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("streams.engine.REWRITE_ROWS", 300)
    caplog.set_level(logging.INFO, logger="sluice.engine")
    wl = mixed_workload(emails=1500, seed=12)
    memory = Engine()
    expected, changelog = _feed(memory, wl.events, 10_000, 1_000)
    restored = Engine(default_components, StateStore(tmp_path, 200, scratch=True))
    try:
        restored.restore(list(changelog.items()))
        got: dict = {}
        sizes = []
        restored.restoring.add(7)  # another partition still being restored: no rewrite yet
        ckpt = restored.snapshot()
        assert sum(sum(map(len, t[""].rows.values())) for t in ckpt.taken.values()) == 0
        _keep(restored, ckpt, got, {})
        restored.restoring.clear()
        while not (ckpt := restored.snapshot()).empty():
            # the email components of all partitions: at most one batch per checkpoint
            sizes.append(sum(sum(map(len, t[""].rows.values())) for t in ckpt.taken.values()))
            _keep(restored, ckpt, got, {})
        assert len(sizes) > 3 and max(sizes) <= 300, sizes
        # one line per partition when its rewrite is through, with every row it marked
        done = [r.args for r in caplog.records if "rewrite's last rows" in r.getMessage()]
        assert sorted(p for p, _ in done) == sorted(restored.partitions)
        # (sizes counts the email component's rows; the warm-up component rewrites too)
        assert all(n > 0 for _, n in done) and sum(n for _, n in done) >= sum(sizes)
        assert {k: v for k, v in got.items() if k in expected} == {
            k: expected[k] for k in got if k in expected
        }
        rollups = ("campaign_analytics", "lead_analytics", "billing_analytics")
        assert {k for k in expected if k[0] in rollups} <= set(got)
    finally:
        restored.close()


def test_the_worker_paces_the_rewrite_by_its_checkpoint_interval(monkeypatch):
    monkeypatch.setattr("streams.engine.REWRITE_ROWS_PER_S", 10_000)
    engine = Engine()
    assert engine.rewrite_rows == 50_000  # tools that snapshot in a loop (rekey)
    engine.pace_rewrites(2.0)
    assert engine.rewrite_rows == 20_000
    engine.pace_rewrites(0.01)
    assert engine.rewrite_rows == 1_000  # never nothing: a rewrite always ends
    engine.pace_rewrites(3_600.0)
    assert engine.rewrite_rows == 100_000  # a long interval: still a bounded snapshot
    engine.close()


def test_bulk_restore_equals_one_by_one(tmp_path):
    """restore_many (a rebuild's batches) computes what restore (one entry at a time)
    does, duplicates and out-of-order states included."""
    wl = mixed_workload(emails=1200, seed=13)
    _, changelog = _feed(Engine(), wl.events, 500, 1_000)
    entries = list(changelog.items())
    random.Random(5).shuffle(entries)
    entries += entries[: len(entries) // 4]  # some again
    one = Engine()
    for key, value in entries:
        one.join([(key, value)])
    many = Engine(default_components, StateStore(tmp_path, 300, scratch=True))
    for i in range(0, len(entries), 700):
        many.join(entries[i : i + 700])
    one.restored(list(one.partitions))
    many.restored(list(many.partitions))
    a: dict = {}
    b: dict = {}
    while not (ckpt := one.snapshot()).empty():
        _keep(one, ckpt, a, {})
    while not (ckpt := many.snapshot()).empty():
        _keep(many, ckpt, b, {})
    assert a == b and a
    many.close()
