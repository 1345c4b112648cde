"""The attribution window: engagement more than W after the send does not count, whatever
the arrival order, and is counted as late instead."""

from __future__ import annotations

import itertools
import random

from streams.engine import Engine, default_components
from streams.rollups import DAY_MS, EmailRollups

SENT = 1_790_000_000_000  # a send time (ms)
W = 7 * DAY_MS


def ev(event_type: str, at: int, email: str = "e1", **extra) -> dict:
    base = {
        "event_type": event_type,
        "event_id": f"{event_type}-{email}-{at}",
        "occurred_at": at,
        "tenant_id": "acme",
        "email_id": email,
    }
    if event_type == "email_sent":
        base.update(campaign_id="c1", mailbox_id="m1", lead_id="l1", sequence_step_id="s1")
    return {**base, **extra}


def campaign_row(component: EmailRollups) -> dict[str, int]:
    rows = component.rows["campaign_analytics"]
    values = [sum(column) for column in zip(*rows.values(), strict=True)]
    names = ("sent", "delivered", "opened", "clicked", "replied", "bounced", "unsub", "spam")
    return dict(zip(names, values, strict=True))


EVENTS = [
    ev("email_sent", SENT),
    ev("email_delivered", SENT + 1000),
    ev("email_opened", SENT + W),  # on the edge: counts
    ev("email_clicked", SENT + W + 1),  # just beyond: late
    ev("email_replied", SENT + 3 * DAY_MS),
    ev("email_replied", SENT + 30 * DAY_MS),  # a later reply of a counted kind changes nothing
    ev("email_bounced", SENT + 40 * DAY_MS, bounce_type="hard"),  # late
]


def test_only_engagement_within_the_window_counts_in_any_arrival_order():
    want = {"sent": 1, "delivered": 1, "opened": 1, "clicked": 0, "replied": 1, "bounced": 0}
    for order in itertools.islice(itertools.permutations(EVENTS), 0, None, 97):
        component = EmailRollups(window_ms=W)
        for event in order:
            component.apply(event)
        row = campaign_row(component)
        assert {k: row[k] for k in want} == want, order


def test_late_events_are_counted_once_the_send_is_known():
    component = EmailRollups(window_ms=W)
    for event in EVENTS:
        component.apply(event)
    # (the second reply is late too, although a reply within the window already counts)
    assert component.late == {"email_clicked": 1, "email_replied": 1, "email_bounced": 1}


def test_an_earlier_send_that_replaces_the_winner_moves_the_window():
    component = EmailRollups(window_ms=W)
    component.apply(ev("email_sent", SENT))
    component.apply(ev("email_opened", SENT + W))
    assert campaign_row(component)["opened"] == 1
    # the same email's send seen again with an earlier time wins: the open is now late
    component.apply(ev("email_sent", SENT - DAY_MS, event_id="earlier"))
    assert campaign_row(component)["opened"] == 0


def test_without_a_window_every_event_counts():
    component = EmailRollups()
    for event in EVENTS:
        component.apply(event)
    row = campaign_row(component)
    assert (row["clicked"], row["bounced"]) == (1, 1)
    assert not component.late


def test_state_restored_from_the_changelog_equals_the_state_that_wrote_it():
    rng = random.Random(5)
    first, second = Engine(lambda: default_components(W)), Engine(lambda: default_components(W))
    events = [ev(e["event_type"], e["occurred_at"], f"e{i}") for i in range(40) for e in EVENTS]
    rng.shuffle(events)
    for offset, event in enumerate(events):
        first.apply(0, "events.email", offset, "email", event)
    ckpt = first.snapshot()
    second.restore([(key, value) for _, key, value in ckpt.changelog])
    assert second.state(0).email.rows == first.state(0).email.rows
    # a replay over the restored state changes nothing
    for offset, event in enumerate(events):
        second.apply(0, "events.email", offset, "email", event)
    assert second.state(0).email.rows == first.state(0).email.rows


def test_states_written_before_the_window_was_enabled_keep_their_flags():
    legacy = EmailRollups()
    for event in EVENTS:
        legacy.apply(event)
    engine = Engine(lambda: default_components(W))
    changelog = legacy.take().changelog
    engine.restore([(f'["{k[0]}", "{k[1]}"]', [0, *v]) for k, v in changelog])
    component = engine.state(0).email
    assert campaign_row(component)["clicked"] == 1  # counted before: stays counted
    component.apply(ev("email_spam_complaint", SENT + 60 * DAY_MS))
    assert campaign_row(component)["spam"] == 0  # new late events do not count


def test_events_that_came_before_their_send_are_counted_late_when_it_arrives():
    component = EmailRollups(window_ms=W)
    component.apply(ev("email_opened", SENT + W + 5))
    component.apply(ev("email_delivered", SENT + 5))
    assert not component.late
    component.apply(ev("email_sent", SENT))
    assert component.late == {"email_opened": 1}
