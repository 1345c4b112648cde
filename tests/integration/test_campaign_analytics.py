"""End to end: Avro events through a real Kafka and the real worker into chDB.

campaign_analytics must equal the spec's aggregateDailyCampaignAnalytics query run over
the same emails (as facts), row for row — across a SIGTERM and a restart, with
duplicates, late and early events, warmup traffic and tenants sharing campaign ids.
"""

from __future__ import annotations

import signal

import pytest

from dev.workload import (
    EMAIL_FACT_COLUMNS,
    EMAILS_DDL,
    REFERENCE_CAMPAIGN_SQL,
    email_workload,
    fact_rows,
    iso,
)
from tests._sluice import Deployment

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

METRICS = [
    "sent",
    "delivered",
    "opened_tracked",
    "clicked_tracked",
    "replied",
    "bounced",
    "unsubscribed",
    "spam_complaints",
]


def reference_rows(reference_olap, facts) -> dict:
    table = f"emails_{id(facts)}"
    reference_olap.command(EMAILS_DDL.format(emails=table))
    reference_olap._client.insert(table, fact_rows(facts), column_names=EMAIL_FACT_COLUMNS)
    columns, rows = reference_olap.query(REFERENCE_CAMPAIGN_SQL.format(emails=table))
    return {(r[0], r[1], str(r[2])): tuple(r[3:]) for r in rows}


def olap_rows(dep: Deployment) -> dict:
    got = dep.query(
        "SELECT company_id, campaign_id, toString(day) AS day, "
        + ", ".join(METRICS)
        + " FROM campaign_analytics_v WHERE sent > 0"
    )
    return {
        (r["company_id"], r["campaign_id"], r["day"]): tuple(r[m] for m in METRICS) for r in got
    }


def test_campaign_analytics_equals_the_spec_query(kafka_bootstrap, reference_olap, tmp_path):
    wl = email_workload(emails=3000, days=4, seed=11)
    events = [
        {**e, "occurred_at": iso(e["occurred_at"])} if i % 2 else e for i, e in enumerate(wl.events)
    ]
    first, second = events[: len(events) // 2], events[len(events) // 2 :]

    dep = Deployment(kafka_bootstrap, tmp_path)
    dep.prepare()
    dep.produce(first)
    dep.start_worker()
    dep.wait_drained()
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()

    # restart: the rest of the stream plus every event of the first half again
    dep.produce(second + first[::3])
    dep.start_worker()
    dep.wait_drained()
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()

    expected = reference_rows(reference_olap, wl.facts)
    got = olap_rows(dep)
    assert len(expected) >= 30
    missing = set(expected) - set(got)
    extra = set(got) - set(expected)
    wrong = {k: (got[k], expected[k]) for k in set(got) & set(expected) if got[k] != expected[k]}
    assert not missing and not extra and not wrong, (missing, extra, list(wrong.items())[:5])
    # one row per key in what users read (FINAL / the view)
    view = dep.query(
        "SELECT count() AS n, uniqExact(company_id, campaign_id, day) AS k "
        "FROM campaign_analytics_v"
    )
    assert view[0]["n"] == view[0]["k"]


def test_replaying_a_flush_changes_nothing(kafka_bootstrap, tmp_path):
    """Kill -9 after a flush and before the commit: the replay rewrites the same rows."""
    wl = email_workload(emails=400, days=2, seed=5)
    dep = Deployment(kafka_bootstrap, tmp_path)
    dep.run("topics", "create")
    dep.produce(wl.events)
    dep.start_worker()
    dep.wait_drained()
    before = olap_rows(dep)
    dep.stop_worker(signal.SIGKILL)
    # a new group (so a fresh changelog too) replays the whole topic into the same store
    dep.group_name = f"{dep.group}-replay"
    dep.start_worker()
    dep.wait_drained()
    assert dep.stop_worker(signal.SIGTERM) == 0
    assert olap_rows(dep) == before
