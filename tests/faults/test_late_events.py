"""Scenario 9: out-of-order and late events under an attribution window.

The worker runs with ``SLUICE_ATTRIBUTION_WINDOW_DAYS=7``. On top of a mixed workload
(which already delivers some engagement before its send, and duplicates):

* opens that happened more than 7 days after their send, some produced before the send
  itself, some long after the stream drained: they must not count anywhere, and the
  ``sluice_late_events`` metric must count each of them;
* clicks that happened within the window but arrive after the stream drained (their rows
  look finished): they must count;

so every row equals the reference over the facts where only in-window engagement is
true, and rows of days that were complete before the late arrivals stay as they were
unless an in-window event belongs to them.
"""

from __future__ import annotations

import random
import re
import signal
import urllib.request
import uuid

import pytest

from streams.rollups import DAY_MS
from tests.faults._faults import RawProducer, report, verify, workload

pytestmark = [pytest.mark.kafka, pytest.mark.integration, pytest.mark.faults]

WINDOW_DAYS = 7
WINDOW_MS = WINDOW_DAYS * DAY_MS


def _engagement(fact, event_type: str, at: int) -> dict:
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "occurred_at": at,
        "tenant_id": fact.tenant_id,
        "source": "mailer",
        "email_id": fact.email_id,
        "campaign_id": fact.campaign_id,
        "mailbox_id": fact.mailbox_id,
        "lead_id": fact.lead_id,
    }


def _late_metric(dep) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{dep.web_port}/metrics", timeout=30) as r:
        text = r.read().decode()
    pattern = r'^sluice_late_events_total\{event_type="([^"]+)"\} ([0-9.e+]+)$'
    found = re.findall(pattern, text, re.M)
    return {kind: float(n) for kind, n in found}


def test_late_events_do_not_count_and_in_window_stragglers_do(deployment, reference_olap):
    dep = deployment
    wl = workload(seed=909)
    rng = random.Random(9)
    dep.prepare()
    facts = {(f.tenant_id, f.email_id): f for f in wl.facts}
    # the workload's own engagement all falls within the window (or this test proves less)
    for e in wl.events:
        fact = facts.get((e["tenant_id"], e.get("email_id")))
        if fact is not None and e["event_type"] != "email_sent" and fact.sent_at:
            assert e["occurred_at"] - fact.sent_at <= WINDOW_MS

    sent = [f for f in wl.facts if f.sent_at]
    unopened = [f for f in sent if not f.opened]
    unclicked = [f for f in sent if not f.clicked and not f.opened]
    rng.shuffle(unopened)
    late_opens = [
        _engagement(f, "email_opened", f.sent_at + WINDOW_MS + rng.randrange(1, 20 * DAY_MS))
        for f in unopened[: max(20, len(unopened) // 30)]
    ]
    early, after = late_opens[: len(late_opens) // 2], late_opens[len(late_opens) // 2 :]
    stragglers = []
    for f in rng.sample(unclicked, max(20, len(unclicked) // 30)):
        stragglers.append(_engagement(f, "email_clicked", f.sent_at + rng.randrange(1, WINDOW_MS)))
        f.clicked = True  # within the window: it counts, however late it arrives

    # phase 1: the stream, with half the late opens produced *before* everything else
    producer = RawProducer(dep)
    producer.send_all(early + wl.events)
    dep.start_worker({"SLUICE_ATTRIBUTION_WINDOW_DAYS": str(WINDOW_DAYS)})
    dep.wait_drained()
    # phase 2: long after, the rest of the late opens and the in-window stragglers
    producer.send_all(after + stragglers)
    dep.wait_drained()

    figures = verify(dep, wl, reference_olap)
    late = _late_metric(dep)
    assert late.get("email_opened") == len(late_opens), late
    assert "email_clicked" not in late, late
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    report(
        "S9 late events",
        events=len(wl.events) + len(late_opens) + len(stragglers),
        late_beyond_window=len(late_opens),
        in_window_stragglers=len(stragglers),
        late_metric=late,
        **figures,
    )
