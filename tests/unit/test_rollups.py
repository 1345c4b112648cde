"""Rollup logic, broker-free: merges are order-independent and idempotent."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from datetime import date

from dev.workload import email_workload
from streams.engine import Engine
from streams.rollups import CAMPAIGN_ANALYTICS, EmailRollups
from topics.taxonomy import EVENT_TYPES

DAY = 86_400_000
T0 = 1_793_491_200_000  # 2026-11-01T00:00:00Z


def ev(
    event_type: str,
    at: int,
    email: str = "e1",
    tenant: str = "t1",
    campaign: str = "c1",
    event_id: str | None = None,
    **extra,
):
    return {
        "event_id": event_id or f"{event_type}-{email}-{at}",
        "event_type": event_type,
        "occurred_at": at,
        "tenant_id": tenant,
        "email_id": email,
        "campaign_id": campaign,
        "mailbox_id": "m1",
        "lead_id": "l1",
        **extra,
    }


def rows(r: EmailRollups) -> dict:
    return {k: tuple(v) for k, v in r.rows["campaign_analytics"].items() if any(v)}


def test_open_days_later_updates_the_send_day_row():
    r = EmailRollups()
    r.apply(ev("email_sent", T0 + 10))
    r.apply(ev("email_opened", T0 + 3 * DAY))
    assert rows(r) == {("t1", "c1", date(2026, 11, 1)): (1, 0, 1, 0, 0, 0, 0, 0)}


def test_many_opens_count_once_and_early_open_counts():
    r = EmailRollups()
    for i in range(5):
        r.apply(ev("email_opened", T0 + i))  # before the send arrives
    assert rows(r) == {}  # nothing is attributed until email_sent
    r.apply(ev("email_sent", T0 + 100))
    r.apply(ev("email_opened", T0 + 200))
    assert rows(r) == {("t1", "c1", date(2026, 11, 1)): (1, 0, 1, 0, 0, 0, 0, 0)}


def test_duplicates_change_nothing():
    r = EmailRollups()
    sent = ev("email_sent", T0)
    assert r.apply(sent)
    assert not r.apply(dict(sent))
    assert rows(r)[("t1", "c1", date(2026, 11, 1))][0] == 1


def test_tenants_sharing_a_campaign_id_are_separate_rows():
    r = EmailRollups()
    r.apply(ev("email_sent", T0, tenant="a"))
    r.apply(ev("email_sent", T0, tenant="b"))
    r.apply(ev("email_opened", T0 + 1, tenant="b"))
    assert rows(r) == {
        ("a", "c1", date(2026, 11, 1)): (1, 0, 0, 0, 0, 0, 0, 0),
        ("b", "c1", date(2026, 11, 1)): (1, 0, 1, 0, 0, 0, 0, 0),
    }


def test_midnight_boundary_is_utc():
    r = EmailRollups()
    r.apply(ev("email_sent", T0 - 1, email="before"))
    r.apply(ev("email_sent", T0, email="after"))
    assert set(rows(r)) == {("t1", "c1", date(2026, 10, 31)), ("t1", "c1", date(2026, 11, 1))}


def test_earliest_send_wins_and_the_email_moves_rows():
    r = EmailRollups()
    r.apply(ev("email_sent", T0 + 2 * DAY, event_id="late"))
    r.apply(ev("email_opened", T0 + 3 * DAY))
    r.take()  # a checkpoint wrote the late send's row
    r.apply(ev("email_sent", T0, event_id="early"))
    assert rows(r) == {("t1", "c1", date(2026, 11, 1)): (1, 0, 1, 0, 0, 0, 0, 0)}
    late_row = ("t1", "c1", date(2026, 11, 3))
    assert r.rows["campaign_analytics"][late_row] == [0] * 8
    assert r.take().rows["campaign_analytics"][late_row] == (0,) * 8, "written again: zeros"


def test_a_move_within_one_batch_leaves_no_row_behind():
    """Accounting is settled once per batch: a row counted and uncounted again before
    any checkpoint took it is never made (nothing in the OLAP needs zeroing)."""
    r = EmailRollups()
    r.apply(ev("email_sent", T0 + 2 * DAY, event_id="late"))
    r.apply(ev("email_opened", T0 + 3 * DAY))
    r.apply(ev("email_sent", T0, event_id="early"))
    assert set(r.rows["campaign_analytics"]) == {("t1", "c1", date(2026, 11, 1))}
    assert set(r.take().rows["campaign_analytics"]) == {("t1", "c1", date(2026, 11, 1))}


def test_settling_per_batch_equals_settling_per_event():
    """The rows a stream counts, applied in batches of any size, are those of the same
    stream settled after every event (the reference): random streams with duplicates,
    sends replaced by earlier ones, moves across days, leads and every event type."""
    rng = random.Random(7)
    kinds = ["email_sent", *sorted(EVENT_TYPES["email"])]  # sends twice as often

    def counted(r: EmailRollups) -> dict:
        # rows whose counters are all zero may differ: a batch never makes a row it
        # uncounts again before settling (per event: a row of zeros, written as such)
        out = {}
        for table, table_rows in r.rows.items():
            width = r._by_table[table].width
            out[table] = {k: v for k, v in table_rows.items() if any(v[:width])}
        return out

    for trial in range(60):
        events = []
        for _ in range(rng.randrange(1, 150)):
            kind = rng.choice(kinds)
            extra = {"bounce_type": rng.choice(["hard", "soft"])} if kind == "email_bounced" else {}
            if kind == "email_sent":
                extra["lead_id"] = f"l{rng.randrange(3)}"
                extra["sequence_step_id"] = rng.choice([None, "s1", "s2"])
            event = ev(
                kind,
                T0 + rng.randrange(0, 4 * DAY),
                email=f"e{rng.randrange(8)}",
                campaign=f"c{rng.randrange(3)}",
                **extra,
            )
            events.append(event)
            if rng.random() < 0.1:
                events.append(dict(event))  # redelivered
        reference = EmailRollups()
        for event in events:
            reference.apply(event)
            reference.settle()
        batched = EmailRollups()
        size = rng.randrange(1, 50)
        for start in range(0, len(events), size):
            for event in events[start : start + size]:
                batched.apply(event)
            batched.settle()
        assert counted(batched) == counted(reference), trial
        assert batched.states == reference.states, trial


def test_any_order_gives_the_same_rows():
    events = [
        ev("email_sent", T0),
        ev("email_delivered", T0 + 5),
        ev("email_opened", T0 + 9),
        ev("email_clicked", T0 + 12),
        ev("email_bounced", T0 + 13, bounce_type="hard"),
        ev("email_sent", T0 + 7, email="e2"),
        ev("email_replied", T0 + 8, email="e2"),
    ]
    results = set()
    for perm in itertools.islice(itertools.permutations(events), 0, 5040, 7):
        r = EmailRollups()
        for e in perm:
            r.apply(e)
        results.add(tuple(sorted(rows(r).items())))
    assert len(results) == 1


def test_rows_equal_the_facts_for_a_generated_workload():
    wl = email_workload(emails=1500, seed=3)
    r = EmailRollups()
    shuffled = wl.events[:]
    random.Random(1).shuffle(shuffled)
    for e in shuffled:
        if e["event_type"].startswith("email_"):
            r.apply(e)
    expected: Counter = Counter()
    for f in wl.facts:
        day = _utc_day(f.sent_at)
        key = (f.tenant_id, f.campaign_id, day)
        for i, flag in enumerate(
            (
                True,
                f.delivered,
                f.opened,
                f.clicked,
                f.replied,
                f.bounce_type is not None,
                f.unsubscribed,
                f.spam_complaint,
            )
        ):
            expected[(key, i)] += int(flag)
    got = rows(r)
    keys = {k for k, _ in expected}
    assert set(got) == keys
    for key in keys:
        assert got[key] == tuple(expected[(key, i)] for i in range(8)), key


def _utc_day(ms: int) -> date:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC).date()


def test_restore_from_changelog_rebuilds_identical_rows():
    wl = email_workload(emails=500, seed=5)
    engine = Engine()
    for offset, e in enumerate(x for x in wl.events if x["event_type"].startswith("email_")):
        engine.apply_email(0, "events.email", offset, e)
    before = rows(engine.partitions[0].email)
    ckpt = engine.snapshot()
    # replay the changelog (with a duplicate of every entry) into a fresh engine
    restored = Engine()
    entries = [(k, v) for _, k, v in ckpt.changelog]
    restored.restore(entries + entries)
    assert rows(restored.partitions[0].email) == before
    assert restored.partitions[0].version() == engine.partitions[0].version()
    # the restored rows are all dirty, so they are rewritten to the OLAP once
    assert {tuple(r[:3]) for r in restored.snapshot().rows["campaign_analytics"]} >= set(before)


def test_failed_checkpoint_requeues_rows():
    engine = Engine()
    engine.apply_email(0, "events.email", 0, ev("email_sent", T0))
    first = engine.snapshot()
    assert engine.snapshot().empty()
    engine.requeue(first)
    again = engine.snapshot()
    assert again.rows["campaign_analytics"][0][:11] == first.rows["campaign_analytics"][0][:11]


def test_campaign_rollup_columns():
    assert Engine().columns("campaign_analytics") == [
        "company_id",
        "campaign_id",
        "day",
        "shard",  # the partition: the view sums the shards
        "sent",
        "delivered",
        "opened_tracked",
        "clicked_tracked",
        "replied",
        "bounced",
        "unsubscribed",
        "spam_complaints",
        "updated",
        "_version",
    ]
    assert CAMPAIGN_ANALYTICS.table == "campaign_analytics"


def test_deferred_accounting_is_bounded(monkeypatch):
    """A caller that never settles (a long backfill batch) holds at most MAX_PENDING
    states' old values; the rows stay exact."""
    import streams.rollups as rollups

    monkeypatch.setattr(rollups, "MAX_PENDING", 50)
    r = EmailRollups()
    for i in range(175):
        r.apply(ev("email_sent", T0 + i, email=f"e{i}"))
        assert len(r._pending) < 50
    r.apply(ev("email_opened", T0 + DAY, email="e3"))
    assert rows(r) == {("t1", "c1", date(2026, 11, 1)): (175, 0, 1, 0, 0, 0, 0, 0)}
    assert not r._pending  # reading the rows settled the rest
