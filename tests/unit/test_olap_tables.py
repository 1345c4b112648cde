"""Every OLAP table the engine fills, against an independent truth, through crashes.

A mixed workload of every event family is played through the engine the way the worker
runs it (tests/_olapsim.py): checkpoints, a failed OLAP write, a crash in the middle of a
changelog flush, a kill -9 and restore, and redelivery of a fifth of the log. Then:

* each analytics table equals the reference SQL run over the workload's *facts*
  (dev.workload.REFERENCE_SQL, in chDB) — the spec's ETL, not our code;
* the audit log holds exactly the compliance actions, once each, chained, secrets masked;
* sensitive access and system events hold exactly their rows; telemetry lands nowhere;
* the rows are accepted by the real DDL and read back unchanged through the views.
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime

import pytest

from dev.workload import REFERENCE_SQL, MixedWorkload, mixed_workload
from sluice.olap import OLAP_TABLES, migrate
from sluice.olap.audit import MASK, verify
from tests._olapsim import FakeOlap, Harness, reference_tables

ANALYTICS = sorted(REFERENCE_SQL)


def play(wl: MixedWorkload, seed: int = 1, every: int = 97) -> Harness:
    """Run the workload with every kind of failure the worker survives."""
    h = Harness(every=every)
    h.produce(wl.events)
    n = len(h.log)
    h.run(n // 3 - n // 3 % every + every // 2, checkpoint=False)
    assert not h.checkpoint(olap_fails=True)  # ClickHouse down: requeued, retried
    h.run(n // 2, checkpoint=False)
    h.checkpoint(lose_changelog=0.5, rng=random.Random(seed))  # crash mid changelog flush
    h.run(4 * n // 5, checkpoint=False)
    h.crash()  # kill -9 between checkpoints
    rng = random.Random(seed)
    h.produce(rng.sample(wl.events, len(wl.events) // 5))  # producer-side redelivery
    h.run()
    assert h.restores == 2
    return h


@pytest.fixture(scope="module")
def workload() -> MixedWorkload:
    return mixed_workload(seed=21)


@pytest.fixture(scope="module")
def played(workload) -> Harness:
    return play(workload)


@pytest.fixture(scope="module")
def reference(reference_olap, workload):
    return reference_tables(reference_olap, workload)


def nonempty(rows: dict) -> dict:
    """Drop rows every email moved out of (all counters zero): the reference has none."""
    return {k: v for k, v in rows.items() if any(x not in (0, None, "") for x in v[len(k) :])}


@pytest.mark.parametrize("table", ANALYTICS)
def test_analytics_table_equals_the_reference_over_facts(played, reference, table):
    got, want = nonempty(played.olap.final(table)), reference[table]
    assert want, f"the workload exercises {table}"
    missing, extra = set(want) - set(got), set(got) - set(want)
    wrong = {k: (got[k], want[k]) for k in set(got) & set(want) if got[k] != want[k]}
    assert not missing and not extra and not wrong, (
        sorted(missing)[:3],
        sorted(extra)[:3],
        list(wrong.items())[:3],
    )


def test_arrival_order_does_not_change_the_analytics(workload, played):
    shuffled = MixedWorkload(**{**workload.__dict__, "events": list(workload.events)})
    random.Random(5).shuffle(shuffled.events)
    other = play(shuffled, seed=9, every=61)
    for table in ANALYTICS:
        assert nonempty(other.olap.final(table)) == nonempty(played.olap.final(table)), table


def audit_rows(olap: FakeOlap) -> list[dict]:
    rows = []
    for row in olap.tables["admin_audit_log"].values():
        rows.append({**row, "occurred_at": int(row["occurred_at"].timestamp() * 1000)})
    return sorted(rows, key=lambda r: (r["tenant_id"], r["seq"]))


def test_audit_log_holds_each_compliance_action_once_in_arrival_order(workload, played):
    rows = audit_rows(played.olap)
    expected: dict[str, list[str]] = {}
    for e in workload.compliance_events():
        expected.setdefault(e["tenant_id"], []).append(e["event_id"])
    got: dict[str, list[str]] = {}
    for r in rows:
        got.setdefault(r["tenant_id"], []).append(r["event_id"])
    assert got == expected
    for tenant, ids in got.items():  # contiguous numbering
        seqs = [r["seq"] for r in rows if r["tenant_id"] == tenant]
        assert seqs == list(range(1, len(ids) + 1))
    assert not {r["event_id"] for r in rows} & workload.low_risk_ids


def test_audit_chain_verifies_and_rows_carry_who_what_whom(workload, played):
    rows = audit_rows(played.olap)
    reports = verify(rows)
    assert reports and all(r.ok for r in reports), reports
    by_id = {e["event_id"]: e for e in workload.compliance_events()}
    for r in rows:
        e = by_id[r["event_id"]]
        assert r["action"] == e["event_type"] and r["actor_user_id"] == e["user_id"]
        assert r["impersonator_user_id"] == e.get("impersonator_user_id")
        assert (r["target_type"], r["target_id"]) == (e.get("target_type"), e.get("target_id"))
        assert r["occurred_at"] == e["occurred_at"]


def test_no_secret_and_no_ip_reaches_the_olap(workload, played):
    blob = repr(played.olap.tables)
    assert workload.secrets and not [s for s in workload.secrets if s in blob]
    assert "10.0.0." not in blob  # admin IP addresses are PII
    summaries = " ".join(r["after_summary"] for r in audit_rows(played.olap))
    assert MASK in summaries


def test_sensitive_access_log_holds_exactly_the_sensitive_events(workload, played):
    got = {(k[0], k[1], v[3]) for k, v in played.olap.final("sensitive_access_log").items()}
    assert got == set(workload.sensitive)


def test_system_events_one_row_per_notable_event_and_per_incident(workload, played):
    rows = played.olap.final("admin_system_events")
    notable = {
        (k[0], k[1].removeprefix("event:"), v[2]) for k, v in rows.items() if v[2] != "alert_storm"
    }
    assert notable == set(workload.notable)
    storms = {k: v for k, v in rows.items() if v[2] == "alert_storm"}
    columns = [
        c
        for c in OLAP_TABLES["admin_system_events"].columns
        if c not in ("updated", "_version", "_deleted")
    ]
    col = {c: i for i, c in enumerate(columns)}
    want = {(s.tenant_id, s.event_key): s for s in workload.storms}
    assert set(storms) == set(want)
    rank = {"info": 1, "warning": 3, "critical": 5}
    for key, values in storms.items():
        s = want[key]
        assert values[col["alert_count"]] == len(set(s.alert_ids))
        assert _ms(values[col["first_seen"]]) == min(s.times)
        assert _ms(values[col["last_seen"]]) == max(s.times)
        assert values[col["severity"]] == max(s.severities, key=rank.__getitem__)
    alerts = sum(len(s.alert_ids) for s in workload.storms)
    assert len(storms) < alerts / 5  # coalesced: never a row per alert


def test_late_alerts_superseded_storm_rows_with_tombstones(played):
    raw = played.olap.tables["admin_system_events"]
    assert any(r["_deleted"] for r in raw.values()), "the shuffled storms split then merged"


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def test_rows_fit_the_real_ddl_and_read_back_through_the_views(reference_olap):
    """Type check against chDB: insert what the engine produced, read the *_v views."""
    assert migrate(reference_olap) is not None
    assert migrate(reference_olap) == []  # idempotent
    tag = uuid.uuid4().hex[:6]
    wl = mixed_workload(emails=150, warmups=60, seed=4, tenants=(f"{tag}-a", f"{tag}-b"))
    h = Harness(every=50)
    h.produce(wl.events)
    sink = FakeOlap()
    writes: list[tuple[str, list[str], list[list]]] = []
    original = h.olap.insert

    def insert_both(table, columns, rows):
        rows = list(rows)
        original(table, columns, rows)
        writes.append((table, list(columns), rows))

    h.olap.insert = insert_both  # type: ignore[method-assign]
    h.run()
    for table, columns, rows in writes:
        reference_olap.insert(table, columns, rows)
        sink.insert(table, columns, rows)
    for table in OLAP_TABLES:
        spec = OLAP_TABLES[table]
        public = [c for c in spec.view_columns if c != "updated"]
        tenant_col = spec.key[0]
        _, rows = reference_olap.query(
            f"SELECT {', '.join(public)} FROM {table}_v WHERE startsWith({tenant_col}, '{tag}-')"
        )
        got = {tuple(r[: len(spec.view_key)]): tuple(_plain(v) for v in r) for r in rows}
        want = {k: tuple(_plain(v) for v in row) for k, row in sink.final(table).items()}
        assert got == want, table


def _plain(value):
    """chDB returns naive UTC datetimes and tuples for arrays; compare on plain values."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, tuple | list):
        return list(value)
    return value


def test_restore_ignores_tags_of_newer_versions_and_restores_the_rest(workload):
    from streams.engine import Engine

    h = Harness()
    h.produce(workload.events[:800])
    h.run()
    entries = [
        *((k, v) for (_, k), v in h.changelog.items()),
        ('["\\u0000future", "t", "x"]', [0, 1, 2]),
    ]
    engine = Engine()
    touched = engine.restore(entries)
    assert touched == set(h.engine.partitions)
    for p, ps in engine.partitions.items():
        original = h.engine.partitions[p]
        assert ps.positions == original.positions
        for a, b in zip(ps.components, original.components, strict=True):
            # (rows handed to the last checkpoint are not known to be written: they are
            # pending again after a restore, by design)
            sizes = {k: v for k, v in a.stats().items() if k != "audit_unwritten"}
            assert sizes == {k: v for k, v in b.stats().items() if k != "audit_unwritten"}, a.tag
