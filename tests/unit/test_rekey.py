"""The re-key, broker-free: state built under tenant keys (the release before email keys)
moves to the partitions the catalog's keys put it, the rows are rewritten from it, and
new-keyed traffic (engagement for emails sent before the move included) then gives
exactly the reference's tables. The Kafka wiring of ``sluice topics rekey`` runs in
tests/integration/test_rekey.py against a real broker and worker."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime

import orjson
import pytest

from dev.workload import REFERENCE_SQL, mixed_workload
from streams import rekey as rk
from streams.engine import Engine
from tests._olapsim import FakeOlap, reference_tables
from topics.catalog import Catalog
from topics.partitioner import partition_for
from topics.taxonomy import family_of

PARTITIONS = 4
CATALOG = Catalog(partitions=PARTITIONS)
NOW = datetime(2026, 12, 1, tzinfo=UTC)

Log = dict[int, list[tuple[int, bytes | None, bytes | None]]]


def tenant_partition(event: dict) -> int:
    """Where the tenant-keyed release put every event."""
    return partition_for(str(event["tenant_id"]).encode(), PARTITIONS)


def home(event: dict) -> int:
    family = family_of(event["event_type"])
    assert family is not None
    return CATALOG.for_family(family).partition_of(event)


def apply(engine: Engine, events: list[dict], place, offsets: dict) -> None:
    for event in events:
        family = family_of(event["event_type"])
        assert family is not None
        partition = place(event)
        topic = f"events.{family}"
        offset = offsets.get((topic, partition), 0)
        offsets[(topic, partition)] = offset + 1
        engine.apply(partition, topic, offset, family, event)


def checkpoint(engine: Engine, olap: FakeOlap, log: Log) -> None:
    """Changelog first (in the bytes the worker writes), then rows, as the worker does."""
    ckpt = engine.snapshot(now=NOW)
    for partition, key, value in ckpt.changelog:
        records = log.setdefault(partition, [])
        records.append((len(records), orjson.dumps(key), orjson.dumps(value)))
    for table, rows in ckpt.rows.items():
        olap.insert(table, engine.columns(table), rows)


def rekey(log: Log, olap: FakeOlap, crash_before_tombstones: bool = False) -> rk.Report:
    """:func:`streams.rekey.run` over an in-memory changelog and OLAP."""
    placement = rk.Placement.of(CATALOG)
    report = rk.Report([rk.PartitionReport(p) for p in range(PARTITIONS)])

    def produce_to(value: bytes | None, key: bytes, partition: int) -> None:
        records = log.setdefault(partition, [])
        records.append((len(records), key, value))

    class Crash(Exception):
        pass

    flushes = itertools.count()

    def flush() -> None:
        if crash_before_tombstones and next(flushes) == 1:
            raise Crash

    for partition in range(PARTITIONS):
        records = list(log.get(partition, []))
        off = rk.off_home(records, partition, placement)
        report.partitions[partition].moved_out = len(off)
        try:
            rk.move(records, off, partition, produce_to, flush)
        except Crash:
            return report  # moves acknowledged, tombstones not: a re-run must finish it

    def existing(table: str, partition: int) -> list[tuple]:
        # the key is the view's key and the shard last
        return [k[:-1] for k in olap.tables[table] if k[-1] == partition]

    def write(table: str, columns: list[str], rows: list[list]) -> None:
        olap.insert(table, columns, rows)

    for partition in range(PARTITIONS):
        engine = Engine()
        rk.restore(log.get(partition, []), partition, engine)
        rk.rows(engine, partition, existing, write, report.partitions[partition], now=NOW)
    return report


def restore_all(log: Log) -> Engine:
    engine = Engine()
    for partition, records in log.items():
        rk.restore(records, partition, engine)
    return engine


def views(olap: FakeOlap) -> dict[str, dict]:
    return {t: nonempty(olap.final(t)) for t in REFERENCE_SQL}


def nonempty(rows: dict) -> dict:
    return {k: v for k, v in rows.items() if any(x not in (0, None, "") for x in v[len(k) :])}


@pytest.fixture(scope="module")
def workload():
    # one tenant sends half of all emails: under tenant keys one partition holds them
    return mixed_workload(
        emails=900, warmups=250, seed=33, tenants=("agency", "t-1", "t-2", "t-3"), heavy=0.5
    )


def test_tenant_keyed_state_moves_home_and_new_traffic_gives_the_reference(
    workload, reference_olap
):
    events = workload.events
    cut = len(events) * 3 // 5
    log: Log = {}
    olap = FakeOlap()
    offsets: dict = {}
    old = Engine()
    apply(old, events[:cut], tenant_partition, offsets)  # the release before: tenant keys
    checkpoint(old, olap, log)
    placement = rk.Placement.of(CATALOG)
    assert rk.misplaced(old, old.partitions, placement), "tenant keys placed it elsewhere"
    before = views(olap)

    report = rekey(log, olap)
    moved = sum(p.moved_out for p in report.partitions)
    assert moved > len(workload.facts) // 3  # most emails changed partition
    # nothing lost, nothing counted twice: the views read the same before new traffic
    assert views(olap) == before
    engine = restore_all(log)
    assert not rk.misplaced(engine, engine.partitions, placement)
    # tenant-keyed components stayed: the audit chain and the plans are where they were
    for partition, ps in old.partitions.items():
        for tag in ("\x00audit", "\x00business"):
            sizes = engine.partitions[partition].by_tag[tag].stats()
            sizes.pop("audit_unwritten", None)  # rows rewritten after any restore, by design
            assert sizes == {
                k: v for k, v in ps.by_tag[tag].stats().items() if "unwritten" not in k
            }

    again = rekey(log, olap)  # idempotent: a second run moves nothing, changes no view
    assert sum(p.moved_out for p in again.partitions) == 0
    assert views(olap) == before

    # new-keyed traffic, with a replay of some old events: old opens of moved emails arrive
    # at their home (the worker forwards an old-keyed record there)
    rng = random.Random(4)
    new = events[cut:] + rng.sample(events[:cut], cut // 10)
    apply(engine, new, home, offsets)
    checkpoint(engine, olap, log)
    reference = reference_tables(reference_olap, workload)
    for table in REFERENCE_SQL:
        got, want = views(olap)[table], reference[table]
        missing, extra = set(want) - set(got), set(got) - set(want)
        wrong = {k: (got[k], want[k]) for k in set(got) & set(want) if got[k] != want[k]}
        assert not missing and not extra and not wrong, (
            table,
            sorted(missing)[:2],
            sorted(extra)[:2],
            list(wrong.items())[:2],
        )


def test_a_rekey_stopped_between_moves_and_tombstones_finishes_on_the_next_run(workload):
    log: Log = {}
    olap = FakeOlap()
    old = Engine()
    apply(old, workload.events, tenant_partition, {})
    checkpoint(old, olap, log)
    before = views(olap)
    rekey(log, olap, crash_before_tombstones=True)
    half = restore_all(log)  # the moved entries are on both partitions for now
    assert rk.misplaced(half, half.partitions, rk.Placement.of(CATALOG))
    rekey(log, olap)
    engine = restore_all(log)
    assert not rk.misplaced(engine, engine.partitions, rk.Placement.of(CATALOG))
    assert views(olap) == before
    emails = sum(len(ps.email.states) for ps in engine.partitions.values())
    assert emails == sum(len(ps.email.states) for ps in old.partitions.values())


def test_a_tombstone_removes_a_restored_entry_and_what_it_counted():
    engine = Engine()
    event = {
        "event_id": "s1",
        "event_type": "email_sent",
        "occurred_at": 1_793_491_200_000,
        "tenant_id": "t",
        "email_id": "e1",
        "campaign_id": "c",
        "mailbox_id": "m",
        "lead_id": "l",
    }
    engine.apply(2, "events.email", 0, "email", event)
    (entry,) = [(k, v) for p, k, v in engine.snapshot(now=NOW).changelog if v[1] is not None][:1]
    other = Engine()
    other.join([entry, (entry[0], None)], 2)  # the value, then a tombstone on its partition
    other.restored([2])
    ps = other.partitions[2]
    assert not ps.email.states
    rows = other.snapshot(now=NOW).rows["campaign_analytics"]
    assert [r[4] for r in rows] == [0]  # the row is rewritten with nothing counted
    # a tombstone of a partition nothing was restored to changes nothing
    assert other.join([(entry[0], None)], 3) == set()
