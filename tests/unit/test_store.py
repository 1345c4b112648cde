"""The local state store (streams/store.py, streams/restore.py) without a broker.

A fake Kafka (:class:`Cluster`: the changelog per partition, offset = index, and the OLAP
rows by version) and the real engine and store: checkpoints as the worker makes them
(snapshot → changelog → rows → image), restarts that reuse the store or rebuild it, and
every answer compared with one engine that saw every event once.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zlib
from collections import defaultdict
from functools import partial
from pathlib import Path

import orjson
import pytest

from dev.workload import mixed_workload
from sluice.privacy import Erasure, Registry, lead_ref
from streams.engine import DAY_MS, Engine, default_components, state_schema
from streams.erasure import ERASING, LeadKeys
from streams.restore import Restored, begin, finish, restore_now
from streams.rollups import LEAD
from streams.store import MARKER_KEY, Changelog, Identity, StateStore
from topics.taxonomy import family_of

PARTITIONS = 3
# two tenants on every partition (crc32 % 3)
TENANTS = ("globex:eu", "wayne", "acme", "initech", "wonka", "stark")
RETENTION_MS = 7 * DAY_MS
REPO = Path(__file__).resolve().parents[2]
LEAD_SLOT = LEAD


def identity(**changes) -> Identity:
    base = {
        "app_id": "app",
        "partitions": PARTITIONS,
        "schema": state_schema(default_components, "window_ms=None"),
        "changelog": "app-email-state-changelog",
    }
    return Identity(**{**base, **changes})


class Cluster:
    """A fake Kafka for one deployment: the changelog, the OLAP, the committed events."""

    def __init__(self, events: list[dict]) -> None:
        self.events = events
        self.log: dict[int, list[tuple[str, list | None]]] = defaultdict(list)
        self.olap: dict[tuple, tuple[int, tuple]] = {}  # (table, key) -> (version, values)
        self.committed = 0  # events covered by the last successful checkpoint
        self.low: dict[int, int] = defaultdict(int)

    def engine(
        self, root: Path, memory_items: int = 300, registry: Registry | None = None, **ident
    ) -> Engine:
        store = StateStore.for_app(root, identity(**ident), memory_items)
        if registry is None:
            return Engine(default_components, store)
        components = partial(default_components, registry=registry, lead_keys=True)
        return Engine(components, store, registry=registry)

    def info(self, partition: int, retention_ms: int = RETENTION_MS) -> Changelog:
        return Changelog(self.low[partition], len(self.log[partition]), retention_ms)

    def start(self, engine: Engine, **info) -> dict[int, Restored]:
        """Restore every partition as a worker would before reading events."""
        out = {}
        for p in range(PARTITIONS):
            records = iter(self.log[p][self.low[p] :])
            out[p] = restore_now(engine, p, self.info(p, **info), records)
        return out

    def apply(self, engine: Engine, start: int, stop: int) -> None:
        for i in range(start, stop):
            event = self.events[i]
            partition = zlib.crc32(event["tenant_id"].encode()) % PARTITIONS
            family = family_of(event["event_type"])
            engine.apply(partition, f"events.{family}", i, family, event)

    def checkpoint(
        self,
        engine: Engine,
        upto: int,
        *,
        rows: bool = True,
        image: bool = True,
        image_fails: bool = False,
    ):
        """One checkpoint covering the events before ``upto``: changelog, OLAP rows (unless
        the OLAP fails: ``rows=False``), then the local store's image (unless the worker
        dies first: ``image=False``; or its write fails: ``image_fails``), then the
        commit."""
        ckpt = engine.snapshot()
        for p, key, value in ckpt.changelog:
            self.log[p].append((key, value))
        if not rows:
            engine.unpersisted(ckpt)
            return ckpt
        for table, items in ckpt.rows.items():
            layout = engine.layouts[table]
            n = len(layout.key_columns)
            columns = layout.columns[n:]
            for r in items:
                version = r[-1] if layout.versioned else 0
                named = dict(zip(columns, r[n:], strict=True))
                if named.get("_deleted"):  # a superseded storm row: the views hide it
                    self.olap.pop((table, *r[:n]), None)
                    continue
                values = tuple(r[n:-2] if layout.versioned else r[n:])
                old = self.olap.get((table, *r[:n]))
                if old is None or version >= old[0]:
                    self.olap[(table, *r[:n])] = (version, values)
        if image and ckpt.cuts:
            try:
                if image_fails:
                    raise OSError("No space left on device")
                # this fake's workers write one after the other: every entry is one run
                engine.persist(ckpt, {p: (0, len(entries)) for p, entries in self.log.items()})
            except OSError:
                engine.unpersisted(ckpt)  # what the checkpoint does (and it commits)
            else:
                engine.persisted(ckpt)
        elif ckpt.cuts:
            engine.unpersisted(ckpt)
        self.committed = upto
        return ckpt

    def drain(self, engine: Engine) -> None:
        """Checkpoints until nothing is left to write (rows rewritten after a rebuild)."""
        for _ in range(1000):
            before = dict(self.olap)
            ckpt = self.checkpoint(engine, self.committed)
            if ckpt.empty() and self.olap == before:
                return
        raise AssertionError("never drained")

    def member(self, root: Path, upto: int) -> Engine:
        """A worker that restores every partition, reads from the last commit up to
        ``upto`` and checkpoints it."""
        engine = self.engine(root)
        self.start(engine)
        self.apply(engine, self.committed, upto)
        self.checkpoint(engine, upto)
        return engine

    def finish(self, engine: Engine) -> None:
        """Read from the last commit to the end (the replay, then the rest), write it all,
        and check the OLAP against the workload's reference."""
        self.apply(engine, self.committed, len(self.events))
        self.checkpoint(engine, len(self.events))
        self.drain(engine)
        assert self.tables() == reference(self.events)
        engine.close()

    def tables(self) -> dict[tuple, tuple]:
        """The OLAP as readers see it (FINAL), without rows that count nothing."""
        return {k: v for k, (_, v) in self.olap.items() if any(x not in (0, None, "") for x in v)}


def reference(events: list[dict]) -> dict[tuple, tuple]:
    cluster = Cluster(events)
    engine = Engine()
    cluster.apply(engine, 0, len(events))
    cluster.checkpoint(engine, len(events))
    return cluster.tables()


@pytest.fixture(scope="module")
def workload() -> list[dict]:
    events = list(mixed_workload(emails=900, seed=21, tenants=TENANTS).events)
    random.Random(4).shuffle(events)
    return events


# ------------------------------------------------------------------- reuse, markers


def test_a_restart_reopens_the_store_and_joins_only_the_changelog_after_its_marker(
    tmp_path, workload
):
    cluster = Cluster(workload)
    half = len(workload) // 2
    engine = cluster.engine(tmp_path)
    cluster.start(engine)
    for upto in range(500, half, 500):
        cluster.apply(engine, upto - 500, upto)
        cluster.checkpoint(engine, upto)
    cluster.apply(engine, cluster.committed, half)
    cluster.checkpoint(engine, half)
    ends = {p: len(cluster.log[p]) for p in range(PARTITIONS)}
    entries = engine.store.stats()["entries"]
    engine.close()  # SIGTERM: the drain checkpoint above wrote the images

    again = cluster.engine(tmp_path)
    restored = cluster.start(again)
    assert {r.mode for r in restored.values()} == {"reused"}
    assert {p: r.low for p, r in restored.items()} == ends, "marker = changelog end"
    assert sum(r.entries for r in restored.values()) == 0
    assert again.store.stats()["entries"] == entries, "the sizes come back from the marker"
    assert again.store.stats()["in_memory"] == 0, "nothing loaded: opened as it is"
    cluster.apply(again, half, len(workload))
    cluster.checkpoint(again, len(workload))
    cluster.drain(again)
    assert cluster.tables() == reference(workload)
    again.close()


def test_a_kill_between_the_changelog_and_the_image_replays_exactly(tmp_path, workload):
    """kill -9 after a checkpoint's changelog flush and OLAP write, before its image (and
    commit): the restart joins that checkpoint's entries from the changelog tail, the
    replayed events change nothing, and every row is right."""
    cluster = Cluster(workload)
    third = len(workload) // 3
    engine = cluster.engine(tmp_path)
    cluster.start(engine)
    cluster.apply(engine, 0, third)
    cluster.checkpoint(engine, third)
    marker = {p: len(cluster.log[p]) for p in range(PARTITIONS)}
    cluster.apply(engine, third, 2 * third)
    committed = cluster.committed
    cluster.checkpoint(engine, 2 * third, image=False)
    cluster.committed = committed  # the kill came before the commit, too
    cluster.apply(engine, 2 * third, 2 * third + 300)  # applied, never checkpointed
    engine.close()  # the kill: nothing more is written

    again = cluster.engine(tmp_path)
    restored = cluster.start(again)
    assert all(r.mode == "reused" and r.low == marker[p] for p, r in restored.items())
    assert sum(r.entries for r in restored.values()) > 0, "the tail was joined"
    cluster.apply(again, cluster.committed, len(workload))  # the replay, then the rest
    cluster.checkpoint(again, len(workload))
    cluster.drain(again)
    assert cluster.tables() == reference(workload)
    again.close()


def test_an_image_cut_before_a_restore_finished_never_claims_what_it_joined(tmp_path, workload):
    """A checkpoint's snapshot while a reused partition still joins the changelog tail,
    its image written after the restore finished, then kill -9: the image's marker is the
    partition's position at the snapshot, so the restart joins the tail again (found by
    tests/faults/test_scale_out.py: a marker past the join, the joined entries only in
    memory, a whole member's work lost behind it after the kill)."""
    cluster = Cluster(workload)
    quarter = len(workload) // 4
    cluster.member(tmp_path / "a", quarter).close()  # a's store: up to a quarter
    cluster.member(tmp_path / "b", 2 * quarter).close()  # another member took over
    marker = {p: len(cluster.log[p]) for p in range(PARTITIONS)}

    back = cluster.engine(tmp_path / "a")  # the partitions come back to a's old store
    results = {p: begin(back, p, cluster.info(p)) for p in range(PARTITIONS)}
    assert {r.mode for r in results.values()} == {"reused"}
    ckpt = back.snapshot()  # a checkpoint's snapshot, before the tails are joined
    assert ckpt.cuts, "the reused partitions are images: they are cut"
    joined = 0
    for p, result in results.items():
        tail = cluster.log[p][result.low : result.high]
        back.join(tail, p)
        joined += len(tail)
        finish(back, p, result)
    assert joined > 0, "b's work is in the tails"
    # the checkpoint goes on: its image is written once the restores are done
    back.persist(ckpt, {p: (0, len(entries)) for p, entries in cluster.log.items()})
    back.persisted(ckpt)
    back.close()  # kill -9: the joined entries were only in memory

    again = cluster.engine(tmp_path / "a")
    restored = cluster.start(again)
    assert all(r.low < marker[p] for p, r in restored.items()), restored
    cluster.finish(again)


def test_a_frozen_member_writing_after_its_successor_keeps_its_marker_before_the_gap(
    tmp_path, workload
):
    """A worker frozen past its session (its partitions went to another member, which
    wrote entries) wakes up and finishes a checkpoint: its entries land after the other
    member's, which its state never joined. Its image's marker must stay before that
    gap, so the next restore of its store joins them."""
    cluster = Cluster(workload)
    quarter = len(workload) // 4
    a = cluster.member(tmp_path / "a", quarter)
    positions = {p: a.partitions[p].changelog_position for p in range(PARTITIONS)}
    # another member took every partition over while a was frozen
    cluster.member(tmp_path / "b", 2 * quarter).close()
    cluster.apply(a, quarter, quarter + 300)  # a wakes up: the same events, once more
    ckpt = a.snapshot()
    runs = {}
    for p in range(PARTITIONS):
        first = len(cluster.log[p])
        cluster.log[p].extend((k, v) for q, k, v in ckpt.changelog if q == p)
        runs[p] = (first, len(cluster.log[p]))  # a's own run, after b's entries
    a.persist(ckpt, runs)
    a.persisted(ckpt)
    assert {p: a.partitions[p].changelog_position for p in range(PARTITIONS)} == positions
    a.close()  # its commit is refused (the generation moved on); the process goes

    back = cluster.engine(tmp_path / "a")
    restored = cluster.start(back)
    assert all(r.low == positions[p] for p, r in restored.items()), restored
    cluster.finish(back)


def test_events_applied_before_a_kept_partition_joins_a_tail_still_reach_the_changelog(
    tmp_path, workload
):
    """A partition kept across a rebalance joins the changelog after its position (here:
    its own last checkpoint's entries, whose image was not written). Events it applied
    after that checkpoint's snapshot (their offsets not committed: read again, and a
    replay changes nothing) must still reach the changelog: states and audit entries."""
    cluster = Cluster(workload)
    quarter = len(workload) // 4
    a = cluster.member(tmp_path / "a", quarter)
    cluster.apply(a, quarter, 2 * quarter)
    cluster.checkpoint(a, 2 * quarter, image_fails=True)  # committed, no image
    cluster.apply(a, 2 * quarter, 3 * quarter)  # the batch after the last snapshot
    for p in range(PARTITIONS):  # the rebalance keeps every partition here
        result = begin(a, p, cluster.info(p))
        assert result.mode == "kept" and result.low < result.high
        a.join(cluster.log[p][result.low : result.high], p)
        result.entries = result.high - result.low
        finish(a, p, result)
    cluster.apply(a, cluster.committed, 3 * quarter)  # read again: changes nothing
    cluster.checkpoint(a, 3 * quarter)
    rebuilt = Engine()  # what any other member would restore
    for p in range(PARTITIONS):
        rebuilt.join(cluster.log[p], p)
    audited = 0
    for p in range(PARTITIONS):
        want = {k: list(v) for k, v in a.partitions[p].email.states.items()}
        assert {k: list(v) for k, v in rebuilt.state(p).email.states.items()} == want, p
        audit = a.partitions[p].by_tag["\x00audit"].entries  # the compliance chain too
        assert set(rebuilt.state(p).by_tag["\x00audit"].entries) == set(audit), p
        audited += len(audit)
    assert audited > 0
    a.close()


def test_rows_lost_with_an_olap_failure_are_written_after_a_restart(tmp_path, workload):
    """The OLAP write failed (changelog durable, no image), then the worker died: the
    restart marks the rows the tail changes, though the replayed events change nothing."""
    cluster = Cluster(workload)
    half = len(workload) // 2
    engine = cluster.engine(tmp_path)
    cluster.start(engine)
    cluster.apply(engine, 0, 400)
    cluster.checkpoint(engine, 400)
    cluster.apply(engine, 400, half)
    cluster.checkpoint(engine, half, rows=False)
    cluster.committed = 400
    engine.close()
    again = cluster.engine(tmp_path)
    cluster.start(again)
    cluster.apply(again, cluster.committed, half)
    cluster.checkpoint(again, half)
    cluster.drain(again)
    assert cluster.tables() == reference(workload[:half])
    again.close()


def test_a_store_behind_by_many_checkpoints_or_moved_away_and_back_catches_up(tmp_path, workload):
    """A store left behind (another member held the partitions meanwhile, or the volume
    was rolled back to an older copy): joining the changelog after its old marker gives
    the same rows as having seen everything."""
    cluster = Cluster(workload)
    half = len(workload) // 2
    a = cluster.engine(tmp_path / "a")
    cluster.start(a)
    cluster.apply(a, 0, half // 2)
    cluster.checkpoint(a, half // 2)
    a.close()  # a's store: up to a quarter
    b = cluster.engine(tmp_path / "b")
    cluster.start(b)  # b rebuilds from the changelog, processes the next quarter
    cluster.apply(b, cluster.committed, half)
    for upto in range(half // 2 + 400, half, 400):
        cluster.checkpoint(b, upto)
    cluster.checkpoint(b, half)
    b.close()
    back = cluster.engine(tmp_path / "a")  # the partitions move back to a
    restored = cluster.start(back)
    assert {r.mode for r in restored.values()} == {"reused"}
    assert sum(r.entries for r in restored.values()) > 0
    cluster.apply(back, half, len(workload))
    cluster.checkpoint(back, len(workload))
    cluster.drain(back)
    assert cluster.tables() == reference(workload)
    back.close()


def test_a_changelog_tombstone_after_the_marker_deletes_from_a_reused_store(tmp_path):
    events = [
        e
        for e in mixed_workload(emails=200, seed=31, tenants=TENANTS).events
        if family_of(e["event_type"]) == "email"
    ]
    cluster = Cluster(events)
    engine = cluster.engine(tmp_path)
    cluster.start(engine)
    cluster.apply(engine, 0, len(events))
    cluster.checkpoint(engine, len(events))
    engine.close()
    # erasure (elsewhere) wrote a tombstone for one sent email of partition p
    p, key = next(
        (p, k)
        for p in range(PARTITIONS)
        for k, v in cluster.log[p]
        if v is not None and not k.startswith('["\\u0000') and v[1] is not None
    )
    cluster.log[p].append((key, None))
    again = cluster.engine(tmp_path)
    restored = cluster.start(again)
    assert restored[p].mode == "reused" and restored[p].entries == 1
    tenant, email = json.loads(key)
    assert (tenant, email) not in again.partitions[p].email.states
    cluster.checkpoint(again, len(events))
    cluster.drain(again)
    # the same as a rebuild of that changelog: the email counts nowhere
    rebuilt = cluster.engine(tmp_path / "rebuilt")
    cluster.olap = {}
    cluster.start(rebuilt)
    cluster.drain(rebuilt)
    fresh = cluster.tables()
    cluster.olap = {}
    again.restored(list(again.partitions))  # rewrite everything the reused store holds
    cluster.drain(again)
    assert cluster.tables() == fresh
    again.close()
    rebuilt.close()


def _email_events() -> list[dict]:
    return [
        e
        for e in mixed_workload(emails=200, seed=31, tenants=TENANTS).events
        if family_of(e["event_type"]) == "email"
    ]


def _a_lead(engine: Engine) -> tuple[int, str, str]:
    """A (partition, tenant, lead) with sent emails in the engine's state."""
    for p, ps in sorted(engine.partitions.items()):
        for (tenant, _), state in ps.email.states.items():
            if state[LEAD_SLOT] is not None:
                return p, tenant, state[LEAD_SLOT]
    raise AssertionError("no lead")


def _lead_keys(engine: Engine, p: int) -> LeadKeys:
    keys = engine.partitions[p].by_tag[LeadKeys.tag]
    assert isinstance(keys, LeadKeys)
    return keys


def test_a_reused_store_is_scrubbed_of_leads_erased_after_its_image(tmp_path):
    """The registry names a lead erased after the image was written, and the changelog
    says nothing of it (its worker stopped before it learnt of the erasure): the reopened
    store forgets the lead before its partition reads an event, writes that to the
    changelog, and remembers it did (a second restart scrubs nothing again)."""
    events = _email_events()
    cluster = Cluster(events)
    engine = cluster.engine(tmp_path, registry=Registry())
    cluster.start(engine)
    cluster.apply(engine, 0, len(events))
    cluster.checkpoint(engine, len(events))
    p, tenant, lead = _a_lead(engine)
    assert engine.partitions[p].email.holds(tenant, lead)
    assert _lead_keys(engine, p).secret(tenant, lead) is not None
    engine.close()

    registry = Registry([Erasure(tenant, lead_ref(tenant, lead), "ev", 0)])
    again = cluster.engine(tmp_path, registry=registry)
    restored = cluster.start(again)
    assert restored[p].mode == "reused" and restored[p].entries == 0
    assert again.partitions[p].email.holds(tenant, lead) == {}
    keys = _lead_keys(again, p)
    assert keys.secret(tenant, lead) is None
    assert keys.keys[(tenant, lead)][1] == ERASING and (tenant, lead) in keys.erasing
    ckpt = cluster.checkpoint(again, len(events))
    scrubbed = [v for q, k, v in ckpt.changelog if q == p and not k.startswith('["\\u0000')]
    assert scrubbed and all(v[1 + LEAD_SLOT] is None for v in scrubbed)
    assert (tenant, lead_ref(tenant, lead)) in again.partitions[p].erased_here
    again.close()

    third = cluster.engine(tmp_path, registry=registry)
    cluster.start(third)
    assert third.partitions[p].email.holds(tenant, lead) == {}
    assert third.partitions[p].email.dirty_states == set(), "scrubbed once, not again"
    assert (tenant, lead) in _lead_keys(third, p).erasing, "still to be asked about"
    third.close()


def test_a_destroyed_lead_key_after_the_marker_goes_from_a_reused_store(tmp_path):
    events = _email_events()
    cluster = Cluster(events)
    engine = cluster.engine(tmp_path, registry=Registry())
    cluster.start(engine)
    cluster.apply(engine, 0, len(events))
    cluster.checkpoint(engine, len(events))
    p, tenant, lead = _a_lead(engine)
    engine.close()
    # another worker erased the lead and destroyed its secret: a tombstone
    cluster.log[p].append((json.dumps([LeadKeys.tag, tenant, lead_ref(tenant, lead)]), None))
    again = cluster.engine(tmp_path, registry=Registry())
    restored = cluster.start(again)
    assert restored[p].mode == "reused" and restored[p].entries == 1
    assert (tenant, lead) not in _lead_keys(again, p).keys
    again.close()


# ------------------------------------------------------------------- rebuild reasons


def _stopped_store(tmp_path: Path, cluster: Cluster) -> None:
    engine = cluster.engine(tmp_path)
    cluster.start(engine)
    cluster.apply(engine, 0, 600)
    cluster.checkpoint(engine, 600)
    engine.close()


def _edit_marker(tmp_path: Path, partition: int, **changes) -> None:
    from rocksdict import AccessType, Options, Rdict

    path = tmp_path / "state" / "app" / str(partition)
    db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_write())
    marker = orjson.loads(db[MARKER_KEY])
    marker.update(changes)
    db[MARKER_KEY] = orjson.dumps(marker)
    db.close()


def _damage(how: str, tmp_path: Path, cluster: Cluster) -> dict:
    """Break partition 1's store (or its changelog) one way; return start() kwargs."""
    path = tmp_path / "state" / "app" / "1"
    if how == "missing":
        shutil.rmtree(path)
    elif how == "unreadable":
        for f in path.iterdir():
            if f.name.startswith("MANIFEST") or f.name == "CURRENT":
                f.write_bytes(b"\x00garbage")
    elif how == "no_marker":
        from rocksdict import AccessType, Options, Rdict

        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_write())
        del db[MARKER_KEY]
        db.close()
    elif how == "partition":  # a copy of partition 2's store
        shutil.rmtree(path)
        shutil.copytree(tmp_path / "state" / "app" / "2", path)
    elif how == "app_id":
        _edit_marker(tmp_path, 1, app_id="another-app")
    elif how == "partitions":
        _edit_marker(tmp_path, 1, partitions=PARTITIONS + 3)
    elif how == "schema":
        _edit_marker(tmp_path, 1, schema="0-oldschema")
    elif how == "ahead":  # the changelog was recreated: it is shorter than the marker
        cluster.log[1] = cluster.log[1][:2]
    elif how == "retention":  # the changelog lost its start (beyond the marker)
        cluster.low[1] = len(cluster.log[1]) + 1
        cluster.log[1] += [cluster.log[1][-1]] * 3
    elif how == "tombstones":  # a day older than delete.retention.ms allows, and the
        # changelog written since (what may have lost its deletes)
        _edit_marker(tmp_path, 1, written_ms=int(time.time() * 1000) - 2 * DAY_MS)
        cluster.log[1].append(cluster.log[1][-1])
        return {"retention_ms": DAY_MS}
    return {}


@pytest.mark.parametrize(
    ("how", "line"),
    [
        ("missing", "no local store"),
        ("unreadable", "cannot be opened"),
        ("no_marker", "has no marker"),
        ("partition", "holds another partition (it holds partition 2)"),
        ("app_id", "belongs to another app id"),
        ("partitions", "another partition count"),
        ("schema", "another schema"),
        ("ahead", "beyond the changelog's end"),
        ("retention", "no longer holds everything after the local store's marker"),
        ("tombstones", "older than the changelog's delete.retention.ms"),
    ],
)
def test_a_store_that_cannot_be_reused_is_rebuilt_in_full_and_says_why(
    how, line, tmp_path, workload, caplog
):
    cluster = Cluster(workload[:1500])
    _stopped_store(tmp_path, cluster)
    kwargs = _damage(how, tmp_path, cluster)
    engine = cluster.engine(tmp_path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sluice.restore"):
        restored = cluster.start(engine, **kwargs)
    assert restored[1].mode == "rebuilt" and restored[1].reason == how
    assert {restored[0].mode, restored[2].mode} == {"reused"}
    lines = [r.getMessage() for r in caplog.records if "partition 1" in r.getMessage()]
    assert len(lines) == 1 and line in lines[0] and "rebuilding" in lines[0], lines
    cluster.apply(engine, 600, 1500)
    cluster.checkpoint(engine, 1500)
    cluster.drain(engine)
    if how not in ("ahead", "retention"):  # those changelogs are broken on purpose
        assert cluster.tables() == reference(workload[:1500])
    # the rebuilt store is an image again after its first checkpoint
    engine.close()
    again = cluster.engine(tmp_path)
    assert cluster.start(again, **kwargs)[1].mode == "reused"
    again.close()


def test_an_old_store_with_nothing_after_its_marker_is_reused(tmp_path, workload):
    """delete.retention.ms only matters for what was written after the marker: a store
    older than that whose changelog has not moved since (an idle partition) is reused."""
    cluster = Cluster(workload[:800])
    _stopped_store(tmp_path, cluster)
    for p in range(PARTITIONS):
        _edit_marker(tmp_path, p, written_ms=int(time.time() * 1000) - 30 * DAY_MS)
    cluster.log[1].append(cluster.log[1][-1])  # partition 1's changelog moved on
    engine = cluster.engine(tmp_path)
    restored = cluster.start(engine)
    assert {p: r.mode for p, r in restored.items()} == {0: "reused", 1: "rebuilt", 2: "reused"}
    assert restored[1].reason == "tombstones"
    engine.close()


def test_a_rebuild_interrupted_before_its_first_image_is_rebuilt_again(tmp_path, workload):
    cluster = Cluster(workload[:1000])
    _stopped_store(tmp_path, cluster)
    shutil.rmtree(tmp_path / "state" / "app" / "0")
    engine = cluster.engine(tmp_path)
    assert cluster.start(engine)[0].mode == "rebuilt"
    engine.close()  # killed before any checkpoint wrote partition 0's image
    again = cluster.engine(tmp_path)
    restored = cluster.start(again)
    assert restored[0].mode == "rebuilt" and restored[0].reason == "no_marker"
    again.close()


def test_rows_still_to_rewrite_after_a_rebuild_are_rewritten_after_a_restart(
    tmp_path, workload, monkeypatch
):
    monkeypatch.setattr("streams.engine.REWRITE_ROWS", 50)
    cluster = Cluster(workload)
    engine = cluster.engine(tmp_path / "old")
    cluster.start(engine)
    cluster.apply(engine, 0, len(workload))
    cluster.checkpoint(engine, len(workload))
    engine.close()
    # the OLAP lost every rollup row (worst case for a rebuild: it must rewrite them all)
    cluster.olap = {k: v for k, v in cluster.olap.items() if not k[0].endswith("_analytics")}
    engine = cluster.engine(tmp_path / "new")
    cluster.start(engine)  # rebuilt: every row to rewrite, 50 per checkpoint
    cluster.checkpoint(engine, len(workload))
    assert engine.partitions[0].db.marker.rewrite
    engine.close()  # stopped long before the rewrite is through
    again = cluster.engine(tmp_path / "new")
    assert {r.mode for r in cluster.start(again).values()} == {"reused"}
    cluster.drain(again)
    assert cluster.tables() == reference(workload)
    assert not again.partitions[0].db.marker.rewrite
    again.close()


def test_a_worker_reaps_stores_it_could_never_reuse(tmp_path, workload):
    cluster = Cluster(workload[:800])
    _stopped_store(tmp_path, cluster)
    _edit_marker(tmp_path, 2, written_ms=int(time.time() * 1000) - 8 * DAY_MS)
    store = StateStore.for_app(tmp_path, identity(), 100)
    assert store.reap(keep=[0], max_age_ms=RETENTION_MS) == [2]
    assert sorted(p.name for p in store.root.iterdir()) == ["0", "1"]
    store.close()


# ------------------------------------------------------------------- atomicity


def test_a_failed_image_write_leaves_the_previous_image_and_the_next_one_carries_it(
    tmp_path, workload
):
    cluster = Cluster(workload)
    half = len(workload) // 2
    engine = cluster.engine(tmp_path)
    cluster.start(engine)
    cluster.apply(engine, 0, 500)
    cluster.checkpoint(engine, 500)
    before = {p: engine.partitions[p].db.marker.offset for p in range(PARTITIONS)}
    cluster.apply(engine, 500, 1000)
    cluster.checkpoint(engine, 1000, image_fails=True)  # e.g. the disk is full
    on_disk = {p: engine.partitions[p].db.read_marker().offset for p in range(PARTITIONS)}
    assert on_disk == before, "the previous image, whole"
    cluster.apply(engine, 1000, half)
    cluster.checkpoint(engine, half)  # carries the failed cut too
    engine.close()
    again = cluster.engine(tmp_path)
    restored = cluster.start(again)
    assert sum(r.entries for r in restored.values()) == 0
    cluster.apply(again, half, len(workload))
    cluster.checkpoint(again, len(workload))
    cluster.drain(again)
    assert cluster.tables() == reference(workload)
    again.close()


WRITER = """
import sys, time
from streams.spill import Budget
from streams.store import Identity, PartitionDB
ident = Identity("app", 1, "s", "c")
db = PartitionDB(__import__("pathlib").Path(sys.argv[1]), 0, Budget(1000), direct=False)
m = db.map("m")
n = 0
print("ready", flush=True)
while True:
    n += 1
    for i in range(500):  # every entry holds the write's number, the marker too
        m[(i,)] = n
    cut = db.cut([], {}, rewrite=False)
    db.write(cut, ident, offset=n)
    db.stored(cut)
"""


def test_an_image_and_its_marker_survive_kill_9_together(tmp_path):
    """A process writes images as fast as it can and is killed -9 at random moments: the
    store it leaves always holds exactly the state its marker names."""
    from streams.spill import Budget
    from streams.store import PartitionDB

    rng = random.Random(7)
    for attempt in range(5):
        path = tmp_path / f"p{attempt}"
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(0.3 + rng.random())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        db = PartitionDB(path, 0, Budget(1000), direct=False)
        marker = db.read_marker()
        assert marker is not None and marker.offset > 0
        db.marker = marker
        values = {v for _, v in db.map("m").items()}
        assert values == {marker.offset}, (values, marker.offset)
        db.close()


# ------------------------------------------------------------------- equivalence


def test_restore_equals_a_full_rebuild_on_a_shuffled_workload_with_crashes(tmp_path, workload):
    """Random restarts (SIGTERM, kill -9 before an image, kill -9 mid-interval), with a
    small memory budget: after each, a worker that reuses its store and one that rebuilds
    from the changelog hold the same state, and the OLAP ends equal to the reference."""
    rng = random.Random(11)
    cluster = Cluster(workload)
    engine = cluster.engine(tmp_path / "w", memory_items=150)
    cluster.start(engine)
    at = 0
    restarts = 0
    while at < len(workload):
        step = rng.randint(200, 700)
        cluster.apply(engine, at, min(at + step, len(workload)))
        at = min(at + step, len(workload))
        fate = rng.random()
        if fate < 0.5:
            cluster.checkpoint(engine, at)
            continue
        if fate < 0.7:
            cluster.checkpoint(engine, at, image=False)
        restarts += 1
        engine.close()
        engine = cluster.engine(tmp_path / "w", memory_items=150)
        cluster.start(engine)
        at = cluster.committed  # the replay
        rebuilt = cluster.engine(tmp_path / f"r{restarts}", memory_items=150)
        saved = dict(cluster.olap)
        cluster.start(rebuilt)
        assert _states(rebuilt) == _states(engine)
        rebuilt.close()
        cluster.olap = saved
    cluster.checkpoint(engine, at)
    cluster.drain(engine)
    assert restarts >= 3
    assert cluster.tables() == reference(workload)
    engine.close()


def _states(engine: Engine) -> dict:
    out = {}
    for p, ps in engine.partitions.items():
        out[p] = {k: list(v) for k, v in ps.email.states.items()}
        out[(p, "rows")] = {t: dict(m.items()) for t, m in ps.email.rows.items()}
        out[(p, "positions")] = dict(ps.positions)
    return out


def test_the_stores_of_a_process_share_one_memtable_budget(tmp_path):
    """Each store alone may hold two 32 MiB memtables; together they stay within
    MEMTABLE_BUDGET (without the shared manager, four stores written 20 MiB each held
    80 MiB of memtables: written once per checkpoint, they never filled one)."""
    from rocksdict import AccessType, Rdict, WriteBatch, WriteOptions

    from streams import store

    dbs = [
        Rdict(
            str(tmp_path / f"p{i}"), options=store._options(), access_type=AccessType.read_write()
        )
        for i in range(4)
    ]
    value = b"v" * 300
    try:
        for db in dbs:
            for start in range(0, 64_000, 4_000):
                batch = WriteBatch(raw_mode=True)
                for k in range(start, start + 4_000):
                    batch.put(b"k%08d" % k, value)
                db.write(batch, WriteOptions())
        # the flushes the shared manager asks for run in RocksDB's background threads: on
        # a busy machine the memtables they free are still held for a moment (without the
        # manager they are held for good: none of them ever fills)
        deadline = time.monotonic() + 15
        while True:
            held = [db.property_int_value("rocksdb.cur-size-all-mem-tables") for db in dbs]
            if sum(held) <= store.MEMTABLE_BUDGET or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert sum(held) <= store.MEMTABLE_BUDGET, [h >> 20 for h in held]
        assert all(db[b"k%08d" % 63_999] == value for db in dbs)  # flushed, not lost
    finally:
        for db in dbs:
            db.close()
