"""Seeded, realistic workloads with their ground truth (tests, benchmarks, demo traffic).

:func:`email_workload` draws emails as *facts* (sent when, delivered?, opened?, ...) and
then the events a real system would emit for them, with the usual mess: several opens
per email, opens days later, events arriving before their ``email_sent``, duplicate
deliveries, sends around UTC midnight, two tenants sharing campaign ids, warmup traffic
from the same mailboxes, and engagement for emails whose send never arrives.
The facts are the independent truth the rollups are checked against.

:func:`mixed_workload` adds every other event family, each with its own truth: warm-up
emails (resends, moves between folders, landings without a send), plan changes spread
over months and arriving late, compliance and low-risk admin actions with secrets in their
summaries, sensitive and ordinary data access, admin UI noise, infra telemetry, alert
storms (keyed by incident and not, arriving out of order so storms split and merge) and
notable system events — with duplicate deliveries throughout. ``REFERENCE_SQL`` computes
every analytics table from the facts alone, the way the spec's ETL would.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
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
    heavy: float = 0.0,
) -> Workload:
    """Generate an email workload; see the module docstring (``heavy``: see
    :func:`tenant_of`)."""
    rng = random.Random(seed)
    wl = Workload()
    timed = _email_events(
        rng,
        wl,
        emails,
        days,
        tenants,
        campaigns_per_tenant,
        start,
        duplicate_rate,
        early_rate,
        warmup_per_email,
        orphans,
        heavy,
    )
    timed.sort(key=lambda item: item[0])
    wl.events = [ev for _, ev in timed]
    return wl


def _event_factory(rng: random.Random, source: str = "mailer") -> Callable[..., dict[str, Any]]:
    def event(tenant: str, event_type: str, at: int, **fields: Any) -> dict[str, Any]:
        return {
            "event_id": _uuid(rng),
            "event_type": event_type,
            "occurred_at": at,
            "tenant_id": tenant,
            "source": source,
            **fields,
        }

    return event


def tenant_of(n: int, tenants: tuple[str, ...], heavy: float = 0.0) -> str:
    """The tenant of the ``n``-th email: round robin, or with ``heavy`` > 0 the first
    tenant sends that share of all emails (the power law of cold email: one agency sends
    half of everything) and the others share the rest in turn. No randomness, so a seed's
    workload is the same with ``heavy`` at 0 as before it existed."""
    if not heavy or len(tenants) == 1:
        return tenants[n % len(tenants)]
    if int((n + 1) * heavy) > int(n * heavy):
        return tenants[0]
    small = n - int((n + 1) * heavy)  # emails before this one that the others sent
    return tenants[1 + small % (len(tenants) - 1)]


def _email_events(
    rng: random.Random,
    wl: Workload,
    emails: int,
    days: int,
    tenants: tuple[str, ...],
    campaigns_per_tenant: int,
    start: datetime,
    duplicate_rate: float,
    early_rate: float,
    warmup_per_email: float,
    orphans: int,
    heavy: float = 0.0,
) -> list[tuple[int, dict[str, Any]]]:
    """Email facts into ``wl.facts``; their events as (arrival order key, event)."""
    t0 = int(start.timestamp() * 1000)
    timed: list[tuple[int, dict[str, Any]]] = []
    event = _event_factory(rng)

    for n in range(emails):
        tenant = tenant_of(n, tenants, heavy)
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
        ids = {
            "email_id": fact.email_id,
            "campaign_id": campaign,
            "mailbox_id": mailbox,
            "lead_id": lead,
        }
        evs = [(sent_at, event(tenant, "email_sent", sent_at, sequence_step_id=step, **ids))]
        if rng.random() < 0.06:
            fact.bounce_type = rng.choice(["hard", "soft"])
            at = sent_at + rng.randrange(1000, HOUR_MS)
            evs.append(
                (at, event(tenant, "email_bounced", at, bounce_type=fact.bounce_type, **ids))
            )
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
            timed.append(
                (at, event(tenant, "warmup_email_sent", at, mailbox_id=mailbox, email_id=wid))
            )
            timed.append(
                (
                    at + 5,
                    event(
                        tenant,
                        "warmup_email_landed",
                        at + 5,
                        mailbox_id=mailbox,
                        email_id=wid,
                        folder=rng.choice(["inbox", "inbox", "spam", "other"]),
                    ),
                )
            )
    for n in range(orphans):  # engagement whose email_sent never arrives: counts nowhere
        tenant = tenants[n % len(tenants)]
        at = t0 + rng.randrange(days * DAY_MS)
        ids = {
            "email_id": f"orphan-{n}",
            "campaign_id": "cmp-0",
            "mailbox_id": "mbx-0",
            "lead_id": "lead-x",
        }
        timed.append((at, event(tenant, "email_opened", at, **ids)))
    return timed


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
    "tenant_id",
    "email_id",
    "campaign_id",
    "mailbox_id",
    "lead_id",
    "sequence_step_id",
    "sent_at",
    "delivered",
    "opened",
    "clicked",
    "replied",
    "bounce_type",
    "unsubscribed",
    "spam_complaint",
]


def fact_rows(facts: list[EmailFact]) -> list[list[Any]]:
    return [[getattr(f, c) for c in EMAIL_FACT_COLUMNS] for f in facts]


def iso(ms: int) -> str:
    """Epoch ms as an ISO-8601 UTC string (what JSON-lines files carry)."""
    return (
        (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms))
        .isoformat()
        .replace("+00:00", "Z")
    )


# ======================================================================================
# The mixed workload: every event family, with ground truth
# ======================================================================================


@dataclass
class WarmupFact:
    """One warm-up email as the warm-up service knows it."""

    tenant_id: str
    email_id: str
    mailbox_id: str
    sent_at: int | None  # earliest send, epoch ms; None if its send never arrives
    first_folder: str | None = None  # folder of the first landing (None: none or unknown)
    has_landed: bool = False
    has_replied: bool = False


@dataclass
class BusinessFact:
    """One plan change (unique by event_id)."""

    tenant_id: str
    event_id: str
    event_type: str
    occurred_at: int
    plan_to: str | None


@dataclass
class StormFact:
    """One alert incident as generated: the alerts that make it up."""

    tenant_id: str
    incident_key: str | None
    alert_name: str
    service: str
    alert_ids: list[str] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    severities: list[str] = field(default_factory=list)

    @property
    def event_key(self) -> str:
        """The admin_system_events row key the contract gives this incident."""
        if self.incident_key:
            return f"incident:{self.incident_key}"
        return "storm:" + json.dumps([self.alert_name, self.service, min(self.times)])


@dataclass
class MixedWorkload(Workload):
    """A workload of every family; truths beyond the email facts."""

    warmups: list[WarmupFact] = field(default_factory=list)
    business: list[BusinessFact] = field(default_factory=list)
    storms: list[StormFact] = field(default_factory=list)
    # (tenant, event_id, kind) of rows that must exist exactly once
    notable: list[tuple[str, str, str]] = field(default_factory=list)
    sensitive: list[tuple[str, str, str]] = field(default_factory=list)
    low_risk_ids: set[str] = field(default_factory=set)
    # secret values placed in admin summaries: none may reach the OLAP
    secrets: set[str] = field(default_factory=set)

    def compliance_events(self) -> list[dict[str, Any]]:
        """Compliance admin actions, once each, in first-arrival order."""
        from topics.taxonomy import COMPLIANCE_ACTIONS

        seen: set[str] = set()
        out = []
        for e in self.events:
            if e["event_type"] in COMPLIANCE_ACTIONS and e["event_id"] not in seen:
                seen.add(e["event_id"])
                out.append(e)
        return out


PLANS = ("starter", "growth", "scale")
SEVERITIES = ("info", "warning", "critical")


def mixed_workload(
    emails: int = 800,
    days: int = 4,
    tenants: tuple[str, ...] = ("acme", "globex:eu", "initech"),
    seed: int = 7,
    start: datetime = datetime(2026, 10, 30, tzinfo=UTC),
    duplicate_rate: float = 0.08,
    warmups: int = 300,
    heavy: float = 0.0,
) -> MixedWorkload:
    """Every event family with its truth; see the module docstring.

    The default start puts the email days across a month boundary (billing months).
    ``heavy``: the first tenant's share of the emails (:func:`tenant_of`); warm-up and the
    other families stay spread evenly over the tenants.
    """
    rng = random.Random(seed)
    wl = MixedWorkload()
    t0 = int(start.timestamp() * 1000)
    span = days * DAY_MS
    timed = _email_events(
        rng, wl, emails, days, tenants, 4, start, duplicate_rate, 0.05, 0.0, 10, heavy
    )

    def add(order: int, ev: dict[str, Any]) -> None:
        timed.append((order, ev))
        if rng.random() < duplicate_rate:
            timed.append((order + rng.randrange(0, DAY_MS), dict(ev)))
            wl.duplicates += 1

    _warmup_events(rng, wl, add, tenants, t0, span, warmups)
    _business_events(rng, wl, add, tenants, t0, span)
    _admin_events(rng, wl, add, tenants, t0, span)
    _security_events(rng, wl, add, tenants, t0, span)
    _infra_events(rng, wl, add, tenants, t0, span)
    _system_events(rng, wl, add, tenants, t0, span)
    timed.sort(key=lambda item: item[0])
    wl.events = [ev for _, ev in timed]
    return wl


Add = Callable[[int, dict[str, Any]], None]


def _warmup_events(
    rng: random.Random,
    wl: MixedWorkload,
    add: Add,
    tenants: tuple[str, ...],
    t0: int,
    span: int,
    count: int,
) -> None:
    event = _event_factory(rng, "warmup")
    for n in range(count):
        tenant = tenants[n % len(tenants)]
        mailbox = f"mbx-{rng.randrange(6)}"
        ids = {"mailbox_id": mailbox, "email_id": f"wu-{n}"}
        sent_at = t0 + rng.randrange(span)
        fact = WarmupFact(tenant, f"wu-{n}", mailbox, sent_at)
        evs = []
        if rng.random() < 0.04:  # the send never arrives: counts nowhere
            fact.sent_at = None
        else:
            evs.append((sent_at, event(tenant, "warmup_email_sent", sent_at, **ids)))
            if rng.random() < 0.05:  # resent later under a new event id: the first wins
                at = sent_at + rng.randrange(1, HOUR_MS)
                evs.append((at, event(tenant, "warmup_email_sent", at, **ids)))
        if rng.random() < 0.9:
            folder = rng.choice(["inbox", "inbox", "inbox", "spam", "other", None])
            landed_at = sent_at + rng.randrange(1000, HOUR_MS)
            fact.has_landed, fact.first_folder = True, folder
            evs.append(
                (landed_at, event(tenant, "warmup_email_landed", landed_at, folder=folder, **ids))
            )
            if rng.random() < 0.1:  # moved to another folder later: placement stays the first
                at = landed_at + rng.randrange(HOUR_MS, DAY_MS)
                moved = rng.choice(["inbox", "spam", "other"])
                evs.append((at, event(tenant, "warmup_email_landed", at, folder=moved, **ids)))
            if rng.random() < 0.3:
                fact.has_replied = True
                for _ in range(rng.randint(1, 2)):
                    at = landed_at + rng.randrange(HOUR_MS, DAY_MS)
                    evs.append((at, event(tenant, "warmup_email_replied", at, **ids)))
        for at, ev in evs:
            # a tenth arrive out of order, some before their send
            add(at - rng.randrange(0, 2 * HOUR_MS) if rng.random() < 0.1 else at, ev)
        wl.warmups.append(fact)


def _business_events(
    rng: random.Random, wl: MixedWorkload, add: Add, tenants: tuple[str, ...], t0: int, span: int
) -> None:
    event = _event_factory(rng, "billing")
    for tenant in tenants:
        times = sorted(t0 - rng.randrange(80 * DAY_MS) for _ in range(5))
        times.append(t0 + rng.randrange(span))
        plan: str | None = None
        plan_to: str | None
        for at in times:
            if plan is None:
                event_type, plan_to = "business_signup", rng.choice(PLANS)
            else:
                event_type = rng.choice(
                    ["business_upgrade", "business_downgrade", "business_churn"]
                )
                others = [p for p in PLANS if p != plan]
                plan_to = None if event_type == "business_churn" else rng.choice(others)
            ev = event(
                tenant,
                event_type,
                at,
                plan_from=plan,
                plan_to=plan_to,
                mrr_cents=rng.randrange(1000, 90000) if plan_to else 0,
                currency="USD",
            )
            plan = plan_to
            wl.business.append(BusinessFact(tenant, ev["event_id"], event_type, at, plan_to))
            # a third arrive late, after the email days: they re-date later months
            order = t0 + span + rng.randrange(DAY_MS) if rng.random() < 0.3 else at
            add(order, ev)


COMPLIANCE_SHAPES: tuple[tuple[str, str, dict[str, str], dict[str, str]], ...] = (
    ("admin_role_changed", "user", {"role": "viewer"}, {"role": "admin"}),
    ("admin_permission_changed", "role", {"exports": "deny"}, {"exports": "allow"}),
    (
        "admin_tenant_config_changed",
        "tenant",
        {"daily_limit": "500", "smtp_password": "{secret}"},
        {"daily_limit": "800", "smtp_password": "{secret}"},
    ),
    (
        "admin_billing_changed",
        "subscription",
        {"card_token": "{secret}", "plan": "growth"},
        {"card_token": "{secret}", "plan": "scale"},
    ),
    ("admin_subscription_changed", "subscription", {"seats": "5"}, {"seats": "9"}),
    ("admin_impersonation_started", "user", {}, {"session_token": "{secret}"}),
    ("admin_account_locked", "user", {"locked": "false"}, {"locked": "true"}),
    (
        "admin_account_deleted",
        "user",
        {"status": "active", "apiKey": "{secret}"},
        {"status": "deleted"},
    ),
)


def _admin_events(
    rng: random.Random, wl: MixedWorkload, add: Add, tenants: tuple[str, ...], t0: int, span: int
) -> None:
    event = _event_factory(rng, "admin")
    ui = _event_factory(rng, "admin-ui")
    for tenant in tenants:
        requests: list[str] = []
        for at in sorted(t0 + rng.randrange(span) for _ in range(30)):
            actor = f"user-{rng.randrange(5)}"
            who = {"user_id": actor, "ip_address": f"10.0.0.{rng.randrange(255)}"}
            if rng.random() < 0.15:
                who["impersonator_user_id"] = f"admin-{rng.randrange(3)}"
            roll = rng.random()
            if roll < 0.25:  # low-risk: never the audit log
                event_type = rng.choice(["admin_setting_toggled", "admin_record_viewed"])
                ev = event(
                    tenant,
                    event_type,
                    at,
                    target_type="lead",
                    target_id=f"lead-{rng.randrange(99)}",
                    **who,
                )
                wl.low_risk_ids.add(ev["event_id"])
            elif roll < 0.4:  # data exports: audit log and sensitive-access record
                scope = rng.choice(["pii", "contacts", "billing"])
                if requests and rng.random() < 0.5:
                    ev = event(
                        tenant,
                        "admin_data_export_approved",
                        at,
                        target_type="export",
                        target_id=f"exp-{len(requests)}",
                        data_scope=scope,
                        approval_of=requests.pop(0),
                        **who,
                    )
                    kind = "export_approved"
                else:
                    ev = event(
                        tenant,
                        "admin_data_export_requested",
                        at,
                        target_type="export",
                        target_id=f"exp-{len(requests) + 1}",
                        data_scope=scope,
                        record_count=rng.randrange(1, 50_000),
                        reason="TICKET-42",
                        **who,
                    )
                    requests.append(ev["event_id"])
                    kind = "export_requested"
                wl.sensitive.append((tenant, ev["event_id"], kind))
            else:
                event_type, target_type, before, after = rng.choice(COMPLIANCE_SHAPES)
                secret = f"s3cr3t-{rng.getrandbits(40):x}"
                wl.secrets.add(secret)
                fill = {"{secret}": secret}
                ev = event(
                    tenant,
                    event_type,
                    at,
                    target_type=target_type,
                    target_id=f"{target_type}-{rng.randrange(20)}",
                    before={k: fill.get(v, v) for k, v in before.items()},
                    after={k: fill.get(v, v) for k, v in after.items()},
                    reason=rng.choice([None, "customer request", "JIRA-7"]),
                    **who,
                )
            add(at, ev)
        for _ in range(25):  # admin UI noise: product analytics only
            at = t0 + rng.randrange(span)
            event_type = rng.choice(
                [
                    "admin_ui_viewed",
                    "admin_button_clicked",
                    "admin_filter_changed",
                    "admin_session_keepalive",
                ]
            )
            add(
                at,
                ui(
                    tenant,
                    event_type,
                    at,
                    user_id="user-1",
                    page="/admin/leads",
                    session_id="sess-1",
                    duration_ms=rng.randrange(10, 90_000),
                ),
            )


def _security_events(
    rng: random.Random, wl: MixedWorkload, add: Add, tenants: tuple[str, ...], t0: int, span: int
) -> None:
    event = _event_factory(rng, "auth")
    for tenant in tenants:
        for _ in range(30):
            at = t0 + rng.randrange(span)
            roll = rng.random()
            if roll < 0.4:
                event_type = rng.choice(
                    [
                        "security_login_succeeded",
                        "security_login_failed",
                        "security_suspicious_activity",
                    ]
                )
                add(at, event(tenant, event_type, at, user_id="user-2", ip_address="10.1.1.1"))
                continue
            if roll < 0.6:
                fields: dict[str, Any] = {
                    "sensitive": True,
                    "data_scope": rng.choice(["pii", None, "leads"]),
                }
            elif roll < 0.8:  # sensitive by scope alone
                fields = {"data_scope": rng.choice(["pii", "contacts"])}
            else:  # not sensitive
                fields = {"sensitive": False, "data_scope": rng.choice(["campaigns", None])}
            ev = event(
                tenant,
                "security_data_access",
                at,
                user_id="user-3",
                resource="leads",
                record_count=rng.randrange(1, 500),
                outcome="success",
                **fields,
            )
            if roll < 0.8:
                wl.sensitive.append((tenant, ev["event_id"], "data_access"))
            add(at, ev)


def _infra_events(
    rng: random.Random, wl: MixedWorkload, add: Add, tenants: tuple[str, ...], t0: int, span: int
) -> None:
    event = _event_factory(rng, "infra")
    for tenant in tenants:
        for _ in range(40):  # telemetry: observability only
            at = t0 + rng.randrange(span)
            add(
                at,
                rng.choice(
                    [
                        event(
                            tenant,
                            "infra_connection_pool_metrics",
                            at,
                            pool_name="pg",
                            pool_size=20,
                            pool_in_use=rng.randrange(20),
                            pool_waiting=rng.randrange(5),
                        ),
                        event(
                            tenant,
                            "infra_latency",
                            at,
                            service="api",
                            latency_ms=rng.random() * 900,
                            percentile=99.0,
                        ),
                        event(
                            tenant,
                            "query_executed",
                            at,
                            query_duration_ms=rng.random() * 50,
                            rows_scanned=rng.randrange(10**6),
                        ),
                        event(
                            tenant, "infra_health_check", at, service="api", health_status="healthy"
                        ),
                    ]
                ),
            )
        storms: list[StormFact] = []
        for j in range(2):  # keyed incidents: one row each, however spread out
            storms.append(
                StormFact(tenant, f"inc-{tenant}-{j}", rng.choice(["DiskFull", "5xx"]), "api")
            )
        # unkeyed: two storms of one rule and service, hours apart, and a lone alert
        storms.append(StormFact(tenant, None, "HighBounceRate", "mailer"))
        storms.append(StormFact(tenant, None, "HighBounceRate", "mailer"))
        storms.append(StormFact(tenant, None, "QueueBacklog", "sender"))
        next_unkeyed = t0 + rng.randrange(span // 2)
        for storm in storms:
            at = next_unkeyed if storm.incident_key is None else t0 + rng.randrange(span // 2)
            size = 1 if storm.alert_name == "QueueBacklog" else rng.randint(8, 25)
            for _ in range(size):
                severity = rng.choice(SEVERITIES)
                ev = event(
                    tenant,
                    "infra_alert",
                    at,
                    alert_name=storm.alert_name,
                    service=storm.service,
                    severity=severity,
                    incident_key=storm.incident_key,
                    message="threshold",
                )
                storm.alert_ids.append(ev["event_id"])
                storm.times.append(at)
                storm.severities.append(severity)
                # shuffled arrival: storms first split, then merge when the middle arrives
                add(at + rng.randrange(0, 3 * HOUR_MS), ev)
                # within a storm consecutive alerts stay under the 30-minute gap
                gap_max = 45 * 60_000 if storm.incident_key else 25 * 60_000
                at += rng.randrange(60_000, gap_max)
            if storm.incident_key is None:  # the next storm of the rule starts after a lull
                next_unkeyed = max(storm.times) + rng.randrange(31 * 60_000, 3 * HOUR_MS)
        wl.storms.extend(storms)


def _system_events(
    rng: random.Random, wl: MixedWorkload, add: Add, tenants: tuple[str, ...], t0: int, span: int
) -> None:
    event = _event_factory(rng, "statuspage")
    for tenant in tenants:
        opened = t0 + rng.randrange(span // 2)
        resolved = opened + rng.randrange(HOUR_MS, 6 * HOUR_MS)
        for event_type, at, fields in (
            ("system_incident_opened", opened, {"status": "investigating"}),
            ("system_incident_resolved", resolved, {"status": "resolved", "ended_at": resolved}),
            (
                "system_maintenance_completed",
                resolved + DAY_MS // 2,
                {"status": "completed", "maintenance_id": "mw-1"},
            ),
        ):
            ev = event(
                tenant,
                event_type,
                at,
                incident_id=f"INC-{tenant}",
                title="Sending delays",
                severity="major",
                started_at=opened,
                affected_services=["sender", "api"],
                **fields,
            )
            kind = event_type.removeprefix("system_")
            wl.notable.append((tenant, ev["event_id"], kind))
            add(at, ev)


# -- reference computations over the facts (the spec's ETL, in ClickHouse SQL) ---------

WARMUPS_DDL = """
CREATE TABLE IF NOT EXISTS {warmups}
(
    tenant_id String, email_id String, mailbox_id String, sent_at Nullable(Int64),
    first_folder Nullable(String), has_landed Bool, has_replied Bool
) ENGINE = MergeTree ORDER BY (tenant_id, email_id)
"""
WARMUP_FACT_COLUMNS = [
    "tenant_id",
    "email_id",
    "mailbox_id",
    "sent_at",
    "first_folder",
    "has_landed",
    "has_replied",
]

BUSINESS_DDL = """
CREATE TABLE IF NOT EXISTS {business}
(
    tenant_id String, event_id String, event_type String, occurred_at Int64,
    plan_to Nullable(String)
) ENGINE = MergeTree ORDER BY (tenant_id, event_id)
"""
BUSINESS_FACT_COLUMNS = ["tenant_id", "event_id", "event_type", "occurred_at", "plan_to"]

_DAY_OF = "toDate(fromUnixTimestamp64Milli({col}, 'UTC'))"
_EMAIL_COUNTS = (
    "countIf(delivered), countIf(opened), countIf(clicked), countIf(replied), "
    "countIf(bounce_type IS NOT NULL)"
)

#: Each analytics table computed from facts: columns as in the catalog, without the row
#: version columns, ordered by key. Placeholders: {emails}, {warmups}, {business}.
REFERENCE_SQL: dict[str, str] = {
    "campaign_analytics": REFERENCE_CAMPAIGN_SQL,
    "mailbox_analytics": f"""
SELECT tenant_id, mailbox_id, {_DAY_OF.format(col="sent_at")} AS d, count(), {_EMAIL_COUNTS},
       countIf(bounce_type = 'hard'), countIf(bounce_type = 'soft'), countIf(unsubscribed),
       countIf(spam_complaint)
FROM {{emails}} GROUP BY tenant_id, mailbox_id, d ORDER BY tenant_id, mailbox_id, d
""",
    "sequence_step_analytics": f"""
SELECT tenant_id, campaign_id, assumeNotNull(sequence_step_id) AS step,
       {_DAY_OF.format(col="sent_at")} AS d, count(), {_EMAIL_COUNTS}, countIf(unsubscribed),
       countIf(spam_complaint)
FROM {{emails}} WHERE sequence_step_id IS NOT NULL
GROUP BY tenant_id, campaign_id, step, d ORDER BY tenant_id, campaign_id, step, d
""",
    "lead_analytics": f"""
SELECT tenant_id, lead_id, count(), {_EMAIL_COUNTS}, countIf(bounce_type = 'hard'),
       countIf(unsubscribed), countIf(spam_complaint), uniqExact(campaign_id),
       min({_DAY_OF.format(col="sent_at")}), max({_DAY_OF.format(col="sent_at")}),
       multiIf(countIf(spam_complaint) > 0, 'spam_complaint',
               countIf(unsubscribed) > 0, 'unsubscribed',
               countIf(bounce_type = 'hard') > 0, 'bounced_hard',
               countIf(replied) > 0, 'replied', countIf(clicked) > 0, 'clicked',
               countIf(opened) > 0, 'opened', countIf(delivered) > 0, 'delivered', 'sent')
FROM {{emails}} GROUP BY tenant_id, lead_id ORDER BY tenant_id, lead_id
""",
    "warmup_analytics": f"""
SELECT tenant_id, mailbox_id, {_DAY_OF.format(col="assumeNotNull(sent_at)")} AS d, count(),
       countIf(has_landed), countIf(first_folder = 'inbox'), countIf(first_folder = 'spam'),
       countIf(first_folder = 'other'), countIf(has_replied),
       if(countIf(has_landed) > 0, countIf(first_folder = 'inbox') / countIf(has_landed), NULL)
FROM {{warmups}} WHERE sent_at IS NOT NULL
GROUP BY tenant_id, mailbox_id, d ORDER BY tenant_id, mailbox_id, d
""",
    "billing_analytics": f"""
WITH
  sends AS (
    SELECT tenant_id, toStartOfMonth({_DAY_OF.format(col="sent_at")}) AS month,
           count() AS billable_sends, uniqExact(mailbox_id) AS active_mailboxes
    FROM {{emails}} GROUP BY tenant_id, month),
  plans AS (
    SELECT tenant_id, toStartOfMonth({_DAY_OF.format(col="occurred_at")}) AS month,
           countIf(event_type = 'business_signup') AS signups,
           countIf(event_type = 'business_upgrade') AS upgrades,
           countIf(event_type = 'business_downgrade') AS downgrades,
           countIf(event_type = 'business_churn') AS churns
    FROM {{business}} GROUP BY tenant_id, month),
  months AS (
    SELECT tenant_id, month FROM sends UNION DISTINCT SELECT tenant_id, month FROM plans),
  latest AS (
    SELECT m.tenant_id AS tenant_id, m.month AS month,
           argMax(b.event_type, (b.occurred_at, b.event_id)) AS last_type,
           argMax(ifNull(b.plan_to, ''), (b.occurred_at, b.event_id)) AS last_plan
    FROM months AS m INNER JOIN {{business}} AS b ON b.tenant_id = m.tenant_id
    WHERE b.occurred_at < toUnixTimestamp(toDateTime(addMonths(m.month, 1), 'UTC')) * 1000
    GROUP BY tenant_id, month)
SELECT m.tenant_id, m.month, ifNull(s.billable_sends, 0), ifNull(s.active_mailboxes, 0),
       ifNull(p.signups, 0), ifNull(p.upgrades, 0), ifNull(p.downgrades, 0),
       ifNull(p.churns, 0),
       if(l.last_type IS NULL OR l.last_type = 'business_churn', NULL, l.last_plan),
       if(l.last_type IS NULL OR l.last_type = 'business_churn', 0, 1)
FROM months AS m
LEFT JOIN sends AS s ON s.tenant_id = m.tenant_id AND s.month = m.month
LEFT JOIN plans AS p ON p.tenant_id = m.tenant_id AND p.month = m.month
LEFT JOIN latest AS l ON l.tenant_id = m.tenant_id AND l.month = m.month
ORDER BY m.tenant_id, m.month
SETTINGS join_use_nulls = 1
""",
}


def warmup_rows(facts: list[WarmupFact]) -> list[list[Any]]:
    return [[getattr(f, c) for c in WARMUP_FACT_COLUMNS] for f in facts]


def business_rows(facts: list[BusinessFact]) -> list[list[Any]]:
    return [[getattr(f, c) for c in BUSINESS_FACT_COLUMNS] for f in facts]
