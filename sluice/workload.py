"""Seeded, realistic workloads with their ground truth (tests, benchmarks, demo traffic).

:func:`email_workload` draws emails as *facts* (sent when, delivered?, opened?, ...) and
then the events a real system would emit for them, with the usual mess: several opens
per email, opens days later, events arriving before their ``email_sent``, duplicate
deliveries, sends around UTC midnight, two tenants sharing campaign ids, warmup traffic
from the same mailboxes, and engagement for emails whose send never arrives.
The facts are the independent truth the rollups are checked against.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


@dataclass
class EmailFact:
    """One email as the OLTP ``emails`` table would hold it."""

    tenant_id: str
    email_id: str
    campaign_id: str
    mailbox_id: str
    lead_id: str
    sequence_step_id: str | None
    sent_at: int  # epoch ms
    delivered: bool = False
    opened: bool = False
    clicked: bool = False
    replied: bool = False
    bounce_type: str | None = None
    unsubscribed: bool = False
    spam_complaint: bool = False


@dataclass
class Workload:
    events: list[dict[str, Any]] = field(default_factory=list)
    facts: list[EmailFact] = field(default_factory=list)
    duplicates: int = 0


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def email_workload(
    emails: int = 3000,
    days: int = 4,
    tenants: tuple[str, ...] = ("acme", "globex:eu"),
    campaigns_per_tenant: int = 4,
    seed: int = 7,
    start: datetime = datetime(2026, 11, 1, tzinfo=UTC),
    duplicate_rate: float = 0.08,
    early_rate: float = 0.05,
    warmup_per_email: float = 0.3,
    orphans: int = 20,
) -> Workload:
    """Generate an email workload; see the module docstring."""
    rng = random.Random(seed)
    t0 = int(start.timestamp() * 1000)
    wl = Workload()
    timed: list[tuple[int, dict[str, Any]]] = []  # (arrival order key, event)

    def event(tenant: str, event_type: str, at: int, **fields: Any) -> dict[str, Any]:
        return {
            "event_id": _uuid(rng),
            "event_type": event_type,
            "occurred_at": at,
            "tenant_id": tenant,
            "source": "mailer",
            **fields,
        }

    for n in range(emails):
        tenant = tenants[n % len(tenants)]
        # campaign ids deliberately collide across tenants
        campaign = f"cmp-{rng.randrange(campaigns_per_tenant)}"
        mailbox = f"mbx-{rng.randrange(6)}"
        lead = f"lead-{rng.randrange(emails // 2 + 1)}"
        step = f"{campaign}-step-{rng.randrange(3)}" if rng.random() < 0.8 else None
        if rng.random() < 0.1:  # sends around UTC midnight
            sent_at = t0 + rng.randrange(1, days) * DAY_MS + rng.randrange(-1500, 1500)
        else:
            sent_at = t0 + rng.randrange(days * DAY_MS)
        fact = EmailFact(tenant, f"em-{n}", campaign, mailbox, lead, step, sent_at)
        ids = {"email_id": fact.email_id, "campaign_id": campaign, "mailbox_id": mailbox, "lead_id": lead}
        evs = [(sent_at, event(tenant, "email_sent", sent_at, sequence_step_id=step, **ids))]
        if rng.random() < 0.06:
            fact.bounce_type = rng.choice(["hard", "soft"])
            at = sent_at + rng.randrange(1000, HOUR_MS)
            evs.append((at, event(tenant, "email_bounced", at, bounce_type=fact.bounce_type, **ids)))
        else:
            fact.delivered = rng.random() < 0.97
            if fact.delivered:
                at = sent_at + rng.randrange(500, 60_000)
                evs.append((at, event(tenant, "email_delivered", at, **ids)))
        if fact.delivered and rng.random() < 0.45:
            fact.opened = True
            for _ in range(rng.randint(1, 5)):  # several opens; some days later
                at = sent_at + rng.randrange(60_000, rng.choice([HOUR_MS, 3 * DAY_MS]))
                evs.append((at, event(tenant, "email_opened", at, **ids)))
            for kind, attr, p in (
                ("email_clicked", "clicked", 0.25),
                ("email_replied", "replied", 0.12),
                ("email_unsubscribed", "unsubscribed", 0.04),
                ("email_spam_complaint", "spam_complaint", 0.02),
            ):
                if rng.random() < p:
                    setattr(fact, attr, True)
                    for _ in range(rng.randint(1, 2)):
                        at = sent_at + rng.randrange(HOUR_MS, 2 * DAY_MS)
                        evs.append((at, event(tenant, kind, at, **ids)))
        early = rng.random() < early_rate
        for at, ev in evs:
            order = at
            if early and ev["event_type"] != "email_sent":
                order = sent_at - rng.randrange(1, 5000)  # arrives before its email_sent
            timed.append((order, ev))
            if rng.random() < duplicate_rate:  # redelivered by the producer side
                timed.append((order + rng.randrange(0, DAY_MS), dict(ev)))
                wl.duplicates += 1
        wl.facts.append(fact)
        if rng.random() < warmup_per_email:
            wid = f"wu-{n}"
            at = sent_at + 1
            timed.append((at, event(tenant, "warmup_email_sent", at, mailbox_id=mailbox, email_id=wid)))
            timed.append(
                (at + 5, event(tenant, "warmup_email_landed", at + 5, mailbox_id=mailbox,
                               email_id=wid, folder=rng.choice(["inbox", "inbox", "spam", "other"])))
            )
    for n in range(orphans):  # engagement whose email_sent never arrives: counts nowhere
        tenant = tenants[n % len(tenants)]
        at = t0 + rng.randrange(days * DAY_MS)
        ids = {"email_id": f"orphan-{n}", "campaign_id": "cmp-0", "mailbox_id": "mbx-0", "lead_id": "lead-x"}
        timed.append((at, event(tenant, "email_opened", at, **ids)))
    timed.sort(key=lambda item: item[0])
    wl.events = [ev for _, ev in timed]
    return wl


# The spec's aggregateDailyCampaignAnalytics (seed §6.2), in ClickHouse dialect, over an
# `emails` table of facts. Deviations, per DESIGN §3: grouped by company as well as
# campaign (two tenants may share a campaign id), and `delivered` counts emails with a
# delivery rather than the spec's `status = 'delivered'` (a status that later moves on to
# 'opened' would otherwise stop counting as delivered).
REFERENCE_CAMPAIGN_SQL = """
SELECT
    tenant_id AS company_id,
    campaign_id,
    toDate(fromUnixTimestamp64Milli(sent_at, 'UTC')) AS day,
    count() AS sent,
    countIf(delivered) AS delivered,
    countIf(opened) AS opened_tracked,
    countIf(clicked) AS clicked_tracked,
    countIf(replied) AS replied,
    countIf(bounce_type IS NOT NULL) AS bounced,
    countIf(unsubscribed) AS unsubscribed,
    countIf(spam_complaint) AS spam_complaints
FROM {emails}
GROUP BY company_id, campaign_id, day
ORDER BY company_id, campaign_id, day
"""

EMAILS_DDL = """
CREATE TABLE IF NOT EXISTS {emails}
(
    tenant_id String, email_id String, campaign_id String, mailbox_id String,
    lead_id String, sequence_step_id Nullable(String), sent_at Int64,
    delivered Bool, opened Bool, clicked Bool, replied Bool,
    bounce_type Nullable(String), unsubscribed Bool, spam_complaint Bool
) ENGINE = MergeTree ORDER BY (tenant_id, email_id)
"""

EMAIL_FACT_COLUMNS = [
    "tenant_id", "email_id", "campaign_id", "mailbox_id", "lead_id", "sequence_step_id",
    "sent_at", "delivered", "opened", "clicked", "replied", "bounce_type", "unsubscribed",
    "spam_complaint",
]


def fact_rows(facts: list[EmailFact]) -> list[list[Any]]:
    return [[getattr(f, c) for c in EMAIL_FACT_COLUMNS] for f in facts]


def iso(ms: int) -> str:
    """Epoch ms as an ISO-8601 UTC string (what JSON-lines files carry)."""
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).isoformat().replace(
        "+00:00", "Z"
    )
