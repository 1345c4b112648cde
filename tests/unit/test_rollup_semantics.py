"""The other analytics tables, case by case (the generated workloads cover the rest)."""

from __future__ import annotations

import itertools
from datetime import date

from streams.engine import Engine
from streams.rollups import (
    BillingPlans,
    EmailRollups,
    WarmupRollups,
    lead_status,
    merge_warmup_event,
    merge_warmup_states,
    new_warmup_state,
)
from tests._olapsim import FakeOlap

T0 = 1_793_491_200_000  # 2026-11-01T00:00:00Z
DAY = 86_400_000


def ev(event_type: str, at: int, email: str = "e1", tenant: str = "t1", **extra) -> dict:
    return {
        "event_id": f"{event_type}-{email}-{at}",
        "event_type": event_type,
        "occurred_at": at,
        "tenant_id": tenant,
        "email_id": email,
        "campaign_id": "c1",
        "mailbox_id": "m1",
        "lead_id": "l1",
        **extra,
    }


def wu(event_type: str, at: int, email: str = "w1", mailbox: str = "m1", **extra) -> dict:
    return {
        "event_id": f"{event_type}-{email}-{at}",
        "event_type": event_type,
        "occurred_at": at,
        "tenant_id": "t1",
        "email_id": email,
        "mailbox_id": mailbox,
        **extra,
    }


def table(r, name: str) -> dict:
    return {k: r.value(name, k) for k in r.rows[name]}


def test_sequence_steps_count_only_emails_with_a_step():
    r = EmailRollups()
    r.apply(ev("email_sent", T0, email="a", sequence_step_id="s1"))
    r.apply(ev("email_sent", T0, email="b"))
    r.apply(ev("email_replied", T0 + 5, email="a"))
    assert table(r, "sequence_step_analytics") == {
        ("t1", "c1", "s1", date(2026, 11, 1)): (1, 0, 0, 0, 1, 0, 0, 0)
    }
    assert table(r, "campaign_analytics")[("t1", "c1", date(2026, 11, 1))][0] == 2


def test_mailbox_rows_split_bounce_kinds():
    r = EmailRollups()
    r.apply(ev("email_sent", T0, email="a"))
    r.apply(ev("email_sent", T0, email="b"))
    r.apply(ev("email_sent", T0, email="c"))
    r.apply(ev("email_bounced", T0 + 1, email="a", bounce_type="hard"))
    r.apply(ev("email_bounced", T0 + 1, email="b", bounce_type="soft"))
    r.apply(ev("email_bounced", T0 + 2, email="b", bounce_type="soft"))
    (row,) = table(r, "mailbox_analytics").values()
    assert row == (3, 0, 0, 0, 0, 2, 1, 1, 0, 0)


def test_lead_totals_and_latest_state():
    r = EmailRollups()
    r.apply(ev("email_sent", T0, email="a"))
    r.apply(ev("email_sent", T0 + 2 * DAY, email="b", campaign_id="c2"))
    r.apply(ev("email_opened", T0 + 3 * DAY, email="a"))
    (row,) = table(r, "lead_analytics").values()
    assert row[:9] == (2, 0, 1, 0, 0, 0, 0, 0, 0)
    # the per-shard set behind the view's distinct campaigns comes last (sorted)
    assert row[9:] == (2, date(2026, 11, 1), date(2026, 11, 3), "opened", ["c1", "c2"])
    r.apply(ev("email_unsubscribed", T0 + 4 * DAY, email="b"))
    assert table(r, "lead_analytics")[("t1", "l1")][-2] == "unsubscribed"


def test_lead_status_precedence_is_order_free():
    metrics = dict.fromkeys(
        [
            "emails_sent",
            "delivered",
            "opened_tracked",
            "clicked_tracked",
            "replied",
            "bounced_hard",
            "unsubscribed",
            "spam_complaints",
        ],
        0,
    )
    assert lead_status(metrics) == ""
    metrics.update(emails_sent=3, delivered=2, replied=1)
    assert lead_status(metrics) == "replied"
    metrics.update(bounced_hard=1)
    assert lead_status(metrics) == "bounced_hard"
    metrics.update(spam_complaints=1, unsubscribed=1)
    assert lead_status(metrics) == "spam_complaint"


def test_warmup_placement_is_the_first_landing_in_any_arrival_order():
    events = [
        wu("warmup_email_sent", T0),
        wu("warmup_email_landed", T0 + 10, folder="spam"),
        wu("warmup_email_landed", T0 + 99, folder="inbox"),  # moved later: does not count
        wu("warmup_email_replied", T0 + 200),
        wu("warmup_email_sent", T0 + 50),  # a resend: the first send keeps the day
    ]
    results = set()
    for perm in itertools.permutations(events):
        r = WarmupRollups()
        for e in perm:
            r.apply(e)
        results.add(tuple(table(r, "warmup_analytics").items()))
    (rows,) = results
    assert rows == ((("t1", "m1", date(2026, 11, 1)), (1, 1, 0, 1, 0, 1, 0.0)),)


def test_warmup_state_merge_equals_event_merge():
    a, b, whole = new_warmup_state(), new_warmup_state(), new_warmup_state()
    for state, events in (
        (a, [wu("warmup_email_landed", T0 + 9, folder="other")]),
        (
            b,
            [
                wu("warmup_email_sent", T0),
                wu("warmup_email_landed", T0 + 5, folder="inbox"),
                wu("warmup_email_replied", T0 + 20),
            ],
        ),
    ):
        for e in events:
            merge_warmup_event(state, e)
            merge_warmup_event(whole, e)
    merge_warmup_states(a, b)
    assert a == whole


def test_inbox_placement_rate_and_landings_without_folder():
    r = WarmupRollups()
    for n, folder in enumerate(["inbox", "inbox", "spam", None]):
        r.apply(wu("warmup_email_sent", T0, email=f"w{n}"))
        r.apply(wu("warmup_email_landed", T0 + 1, email=f"w{n}", folder=folder))
    r.apply(wu("warmup_email_sent", T0, email="w9"))  # not landed yet
    (row,) = table(r, "warmup_analytics").values()
    assert row == (5, 4, 2, 1, 0, 0, 0.5)


def biz(n: int, event_type: str, at: int, plan_to: str | None, tenant: str = "t1") -> dict:
    return {
        "event_id": f"b{n}",
        "event_type": event_type,
        "occurred_at": at,
        "tenant_id": tenant,
        "source": "billing",
        "plan_to": plan_to,
    }


OCT, NOV, DEC = date(2026, 10, 1), date(2026, 11, 1), date(2026, 12, 1)
OCT_MS = T0 - 31 * DAY


def billing(engine: Engine, olap: FakeOlap) -> dict:
    """billing_analytics_v after a checkpoint of ``engine`` into ``olap`` (the catalog's
    merges, as the view computes them; checked against the real view elsewhere)."""
    for table, rows in engine.snapshot().rows.items():
        olap.insert(table, engine.columns(table), rows)
    return {k: v[2:] for k, v in olap.final("billing_analytics").items()}


def test_billing_months_count_sends_mailboxes_and_plan_changes():
    e, olap = Engine(), FakeOlap()
    e.apply(0, "events.email", 0, "email", ev("email_sent", T0, email="a"))
    e.apply(0, "events.email", 1, "email", ev("email_sent", T0 + 1, email="b", mailbox_id="m2"))
    e.apply(0, "events.email", 2, "email", ev("email_sent", T0 + 2, email="b", mailbox_id="m2"))
    e.apply(0, "events.business", 0, "business", biz(1, "business_signup", OCT_MS, "starter"))
    e.apply(0, "events.business", 1, "business", biz(1, "business_signup", OCT_MS, "starter"))
    assert billing(e, olap) == {
        ("t1", OCT): (0, 0, 1, 0, 0, 0, "starter", 1),
        ("t1", NOV): (2, 2, 0, 0, 0, 0, "starter", 1),  # the plan carries over
    }


def test_a_late_plan_change_re_dates_every_later_month():
    e, olap = Engine(), FakeOlap()
    e.apply(0, "events.business", 0, "business", biz(1, "business_signup", OCT_MS, "starter"))
    e.apply(
        0, "events.email", 0, "email", ev("email_sent", T0 + 30 * DAY + 5, email="a")
    )  # December
    e.apply(0, "events.email", 1, "email", ev("email_sent", T0, email="b"))  # November
    billing(e, olap)
    # an upgrade in October arrives late: November and December (sends only) change too
    e.apply(0, "events.business", 1, "business", biz(2, "business_upgrade", OCT_MS + DAY, "scale"))
    assert billing(e, olap) == {
        ("t1", OCT): (0, 0, 1, 1, 0, 0, "scale", 1),
        ("t1", NOV): (1, 1, 0, 0, 0, 0, "scale", 1),
        ("t1", DEC): (1, 1, 0, 0, 0, 0, "scale", 1),
    }
    e.apply(0, "events.business", 2, "business", biz(3, "business_churn", T0 + 3 * DAY, None))
    got = billing(e, olap)
    assert got[("t1", NOV)] == (1, 1, 0, 0, 0, 1, None, 0)
    assert got[("t1", DEC)] == (1, 1, 0, 0, 0, 0, None, 0)


def test_billing_months_whose_sends_are_on_other_partitions_get_the_plan_carried():
    """Business events sit on the tenant's partition (0), sends on every partition: a
    month with sends only on partition 3 shows the plan at the end of the latest month
    with plan events before it; a month before any plan event shows none; distinct
    mailboxes are counted over the partitions, not summed."""
    e, olap = Engine(), FakeOlap()
    e.apply(3, "events.email", 0, "email", ev("email_sent", OCT_MS - 40 * DAY, email="x"))  # Aug
    e.apply(0, "events.business", 0, "business", biz(1, "business_signup", OCT_MS, "starter"))
    e.apply(1, "events.email", 0, "email", ev("email_sent", T0, email="a"))
    e.apply(2, "events.email", 0, "email", ev("email_sent", T0, email="b"))  # same mailbox
    e.apply(2, "events.email", 1, "email", ev("email_sent", T0, email="c", mailbox_id="m2"))
    e.apply(3, "events.email", 1, "email", ev("email_sent", T0 + 31 * DAY, email="d"))  # Dec
    aug = date(2026, 8, 1)
    assert billing(e, olap) == {
        ("t1", aug): (1, 1, 0, 0, 0, 0, None, 0),  # before any plan event
        ("t1", OCT): (0, 0, 1, 0, 0, 0, "starter", 1),
        ("t1", NOV): (3, 2, 0, 0, 0, 0, "starter", 1),  # m1 on shards 1 and 2 counts once
        ("t1", DEC): (1, 1, 0, 0, 0, 0, "starter", 1),
    }
    # a November upgrade arriving late re-dates December, whose sends are on partition 3,
    # without partition 3 writing anything
    e.apply(0, "events.business", 1, "business", biz(2, "business_upgrade", T0 + DAY, "scale"))
    before = olap.inserts["billing_analytics"]
    got = billing(e, olap)
    assert olap.inserts["billing_analytics"] == before + 1  # the November plan row only
    assert got[("t1", NOV)] == (3, 2, 0, 1, 0, 0, "scale", 1)
    assert got[("t1", DEC)] == (1, 1, 0, 0, 0, 0, "scale", 1)
    assert got[("t1", aug)] == (1, 1, 0, 0, 0, 0, None, 0)


def test_plan_state_restores_from_its_changelog():
    plans = BillingPlans()
    plans.apply(biz(1, "business_signup", OCT_MS, "growth"))
    taken = plans.take()
    restored = BillingPlans()
    for key, value in taken.changelog:
        restored.restore(key, value)
    restored.restored()
    assert restored.take().rows == taken.rows
