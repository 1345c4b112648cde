"""The benchmark's seeded workload and the figures every contender must reproduce.

Built from :func:`dev.workload.mixed_workload` so it carries the same mess as the
tests (duplicates, late and early engagement, alert storms, secrets in admin summaries)
*and* its ground truth: the workload is a sequence of independent *chunks*, each one
``mixed_workload`` over its own three tenants (so facts never collide), topped up with
truth-free telemetry (infra metrics, admin UI clicks, security logins) so the family mix
looks like production rather than like a unit test: about 63 % email, 17 % infra
(telemetry and alert storms), 10 % admin (UI and actions), 7 % warm-up, 4 % security,
and a little business and system traffic. The chunks are interleaved
in arrival order and the last gap is filled with telemetry, so the length is exactly
``n`` events for any ``n``.

Every contender counts events per *(tenant, campaign, UTC day, event type)*; the expected
table comes from the events here (:func:`expected_counts`), the expected routing from
``streams/routing.py`` (:func:`expected_destinations`), and Sluice's own rollups are
checked against the email facts (:func:`reference_campaign_rows`, the spec's
``aggregateDailyCampaignAnalytics`` computed in Python).
"""

from __future__ import annotations

import heapq
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dev.workload import DAY_MS, EmailFact, mixed_workload

# One chunk: 900 emails (~3,800 email events) and its warm-up, business, admin, security,
# infra and system traffic for three tenants; then telemetry worth FILLER_SHARE of it.
CHUNK_EMAILS = 900
CHUNK_WARMUPS = 150
FILLER_SHARE = 0.20
START = datetime(2026, 10, 30, tzinfo=UTC)
DAYS = 4

# Truth-free event types: none of them reaches the OLAP (see streams/routing.py).
_FILLER = (
    ("infra_latency", 0.22),
    ("infra_connection_pool_metrics", 0.14),
    ("query_executed", 0.12),
    ("infra_health_check", 0.08),
    ("admin_ui_viewed", 0.14),
    ("admin_button_clicked", 0.10),
    ("admin_filter_changed", 0.06),
    ("admin_session_keepalive", 0.04),
    ("security_login_succeeded", 0.07),
    ("security_login_failed", 0.03),
)

CAMPAIGN_METRICS = (
    "sent",
    "delivered",
    "opened_tracked",
    "clicked_tracked",
    "replied",
    "bounced",
    "unsubscribed",
    "spam_complaints",
)


@dataclass
class BenchWorkload:
    """The events in arrival order plus the email facts they were drawn from."""

    events: list[dict[str, Any]]
    facts: list[EmailFact] = field(default_factory=list)
    seed: int = 1
    chunks: int = 0

    def families(self) -> Counter[str]:
        from topics.taxonomy import family_of

        return Counter(family_of(e["event_type"]) or "?" for e in self.events)


def count_key(event: dict[str, Any]) -> str:
    """The rollup key every contender counts by: ``tenant|campaign|day|event_type``.

    ``campaign`` is empty for events without one; ``day`` is days since the epoch (UTC).
    """
    return (
        f"{event['tenant_id']}|{event.get('campaign_id') or ''}|"
        f"{event['occurred_at'] // DAY_MS}|{event['event_type']}"
    )


def _filler(rng: random.Random, n: int, tenants: tuple[str, ...]) -> list[dict[str, Any]]:
    """``n`` telemetry events spread over the workload's days, in time order."""
    t0 = int(START.timestamp() * 1000)
    types = [t for t, _ in _FILLER]
    weights = [w for _, w in _FILLER]
    out = []
    for _ in range(n):
        event_type = rng.choices(types, weights)[0]
        at = t0 + rng.randrange(DAYS * DAY_MS)
        e: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "event_type": event_type,
            "occurred_at": at,
            "tenant_id": rng.choice(tenants),
            "source": "bench",
            "user_id": f"user-{rng.randrange(500)}",
        }
        if event_type.startswith("infra_") or event_type == "query_executed":
            e.update(
                service=f"svc-{rng.randrange(8)}",
                latency_ms=rng.random() * 900,
                pool_name="pg",
                pool_size=20,
                pool_in_use=rng.randrange(20),
                pool_waiting=rng.randrange(3),
                health_status="healthy",
                query_duration_ms=rng.random() * 90,
                rows_scanned=rng.randrange(10_000),
                query_kind="report",
            )
        elif event_type.startswith("security_"):
            e.update(
                ip_address=f"203.0.113.{rng.randrange(250)}",
                user_agent="Mozilla/5.0",
                outcome="success" if event_type.endswith("succeeded") else "failure",
            )
        out.append(e)
    out.sort(key=lambda e: e["occurred_at"])
    return out


def _arrival_merge(streams: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Interleave streams that span the same time range, keeping each one's own order."""

    def keyed(i: int, s: list[dict[str, Any]]):
        n = len(s)
        return ((j / n, i, e) for j, e in enumerate(s))

    return [e for _, _, e in heapq.merge(*(keyed(i, s) for i, s in enumerate(streams) if s))]


def build(n: int, seed: int = 1, heavy: float = 0.0) -> BenchWorkload:
    """Exactly ``n`` events, deterministic for a given ``(n, seed, heavy)``.

    ``heavy`` > 0: one tenant, ``agency``, is the first tenant of every chunk and sends that
    share of all emails (:func:`dev.workload.tenant_of`; the other families stay spread
    over a chunk's tenants); its email ids are made unique per chunk so the facts stay
    true (:mod:`bench.skew`).
    """
    rng = random.Random(seed)
    # small runs get smaller chunks, so they still carry email traffic and its truth
    emails = max(20, min(CHUNK_EMAILS, n // 7))
    warmups = emails * CHUNK_WARMUPS // CHUNK_EMAILS
    chunks: list[list[dict[str, Any]]] = []
    facts: list[EmailFact] = []
    all_tenants: list[str] = []
    total = 0
    k = 0
    while True:
        first = "agency" if heavy else f"acme-{k}"
        tenants = (first, f"globex:eu-{k}", f"initech-{k}")
        wl = mixed_workload(
            emails=emails,
            days=DAYS,
            tenants=tenants,
            seed=seed * 100_003 + k,
            start=START,
            warmups=warmups,
            heavy=heavy,
        )
        if heavy:  # one tenant across chunks: its email ids must not meet
            for e in wl.events:
                if "email_id" in e:
                    e["email_id"] = f"c{k}-{e['email_id']}"
            for f in wl.facts:
                f.email_id = f"c{k}-{f.email_id}"
        filler = _filler(rng, int(len(wl.events) * FILLER_SHARE), tenants)
        size = len(wl.events) + len(filler)
        if total + size > n:
            break
        chunks.append(_arrival_merge([wl.events, filler]))
        facts.extend(wl.facts)
        all_tenants.extend(tenants)
        total += size
        k += 1
    rest = n - total
    if rest:
        chunks.append(_filler(rng, rest, tuple(dict.fromkeys(all_tenants)) or ("acme-0",)))
    events = _arrival_merge(chunks)
    assert len(events) == n, (len(events), n)
    return BenchWorkload(events, facts, seed, k)


def expected_counts(events: list[dict[str, Any]]) -> dict[str, int]:
    """Events per :func:`count_key`: what every contender must end up with."""
    return dict(Counter(count_key(e) for e in events))


def expected_destinations(events: list[dict[str, Any]]) -> dict[str, int]:
    """Events per destination of the routing table (an event counts once per destination)."""
    from streams.routing import route

    out: Counter[str] = Counter()
    for e in events:
        out.update(route(e))
    return dict(out)


def expected_sinks(events: list[dict[str, Any]]) -> dict[str, int]:
    """Events per external sink (posthog, observability, siem)."""
    from streams.routing import sink_targets

    out: Counter[str] = Counter()
    for e in events:
        out.update(sink_targets(e))
    return dict(out)


def reference_campaign_rows(facts: list[EmailFact]) -> dict[tuple[str, str, str], tuple]:
    """The spec's ``aggregateDailyCampaignAnalytics`` over the facts, in Python.

    Same grain and deviations as ``dev.workload.REFERENCE_CAMPAIGN_SQL``: keyed by
    (company, campaign, UTC send day as ``YYYY-MM-DD``), distinct emails per metric.
    """
    rows: dict[tuple[str, str, str], list[int]] = {}
    for f in facts:
        day = datetime.fromtimestamp(f.sent_at / 1000, UTC).date().isoformat()
        r = rows.setdefault((f.tenant_id, f.campaign_id, day), [0] * len(CAMPAIGN_METRICS))
        for i, hit in enumerate(
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
            r[i] += int(hit)
    return {k: tuple(v) for k, v in rows.items()}
