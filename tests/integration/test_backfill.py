"""`sluice backfill` against a real broker and a real worker: rows lost from the OLAP are
recomputed from Kafka, only inside the asked range, identically on a second run, while
the worker keeps running; retention-deleted history is reported, never written short."""

from __future__ import annotations

import subprocess
import sys
from datetime import date

import pytest

from streams.backfill import ROLLUP_TABLES
from tests._olapsim import reference_tables
from tests.faults._faults import (
    RawProducer,
    _norm,
    _olap_table,
    query,
    verify,
    wait_for,
    workload,
)

pytestmark = [pytest.mark.kafka, pytest.mark.integration]


def _truncate(dep, tables) -> None:
    """Lose rows as an operator might (a dropped partition, a bad manual DELETE)."""
    sql = "; ".join(f"TRUNCATE TABLE {t}" for t in tables)
    code = (
        "from sluice.olap import connect\n"
        f"c = connect({dep.olap_url!r})\n"
        f"for s in {sql!r}.split('; '): c.command(s)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=dep.root, timeout=120)


def _in_range(
    table: str, key_and_values: tuple, columns: list[str], start: date, carried: dict
) -> bool:
    row = dict(zip(columns, key_and_values, strict=True))
    if table == "lead_analytics":
        return row["last_sent_day"] is not None and row["last_sent_day"] >= str(start)
    if table == "billing_analytics":  # from the month the range carries its plan from
        return row["month"] >= min(str(start.replace(day=1)), carried.get(row["company_id"], "~"))
    return row["day"] >= str(start)


def _carried(reference_rows: dict, start: date) -> dict[str, str]:
    """Per company, the latest month with plan events before ``start`` (see backfill)."""
    latest: dict[str, str] = {}
    for (company, month), row in reference_rows.items():
        month = str(month)
        if month < str(start.replace(day=1)) and any(row[4:8]):
            latest[company] = max(latest.get(company, month), month)
    return latest


def _public(table: str) -> list[str]:
    from sluice.olap import OLAP_TABLES

    return [c for c in OLAP_TABLES[table].view_columns if c != "updated"]


def test_backfill_restores_lost_rows_in_range_idempotently_while_the_worker_runs(
    deployment, reference_olap
):
    dep = deployment
    dep.prepare()
    wl = workload(seed=71, events=6000)
    producer = RawProducer(dep)
    producer.send_all(wl.events)
    producer.flush()
    dep.start_worker()
    dep.wait_drained()
    reference = reference_tables(reference_olap, wl)
    days = sorted({k[2] for k in reference["campaign_analytics"]})
    assert len(days) >= 3, days
    start = days[len(days) // 2]

    # a second batch of rows is lost while the worker is down (a worker restart would
    # rewrite its whole state: the rows are checked before it comes back)
    dep.stop_worker()
    _truncate(dep, ROLLUP_TABLES)
    assert all(not _olap_table(dep, t) for t in ROLLUP_TABLES)

    first = dep.run("backfill", "--from", str(start))
    # no worker: the CLI opens the store itself (chDB, or the test server's database)
    assert dep.olap_url.split("://")[0] + "://" in first.stdout, first.stdout
    for table in ROLLUP_TABLES:
        columns = _public(table)
        want = {
            tuple(_norm(x) for x in k): tuple(_norm(v) for v in row)
            for k, row in reference[table].items()
        }
        carried = _carried(reference["billing_analytics"], start)
        want = {k: v for k, v in want.items() if _in_range(table, v, columns, start, carried)}
        got = _olap_table(dep, table)
        assert want, table
        assert got == want, (table, len(got), len(want))
        assert table in first.stdout

    # a second run: the same rows, `updated` included, and no new row versions at all
    def snapshot() -> tuple[dict, dict]:
        rows = {t: query(dep, f"SELECT * FROM {t}_v ORDER BY ALL") for t in ROLLUP_TABLES}
        raw = {t: query(dep, f"SELECT count() AS n FROM {t}")[0]["n"] for t in ROLLUP_TABLES}
        return rows, raw

    before = snapshot()
    dep.run("backfill", "--from", str(start))
    assert snapshot() == before

    # the whole history with the worker running (it owns the store: rows go through it)
    dep.start_worker()
    query(dep, "SELECT 1")  # serving (so it has opened the store)
    live = dep.run("backfill", "--from", str(days[0]))
    assert "the worker at" in live.stdout, live.stdout
    assert dep.worker is not None and dep.worker.poll() is None
    # billing months before the first send day (plan events only) are not in the range:
    # the worker brings those rows back itself, by rewriting its state at the checkpoints
    # after its restart, which may come after the backfill returned (one per interval)
    wanted = {t: {tuple(_norm(x) for x in k) for k in reference[t]} for t in ROLLUP_TABLES}
    wait_for(
        lambda: all(wanted[t] <= set(_olap_table(dep, t)) for t in ROLLUP_TABLES),
        60,
        "every rollup row back (the backfill's range, the worker's rewrite the rest)",
        dep,
    )
    verify(dep, wl, reference_olap)


def test_backfill_skips_rows_whose_events_retention_deleted(deployment, reference_olap):
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    dep = deployment
    dep.partitions = 1
    dep.prepare()
    wl = workload(seed=72, events=3000)
    producer = RawProducer(dep)
    producer.send_all(sorted(wl.events, key=lambda e: e["occurred_at"]))
    producer.flush()
    dep.start_worker()
    dep.wait_drained()
    dep.stop_worker()

    # retention deletes the first third of the email topic
    admin = AdminClient({"bootstrap.servers": dep.bootstrap})
    topic = dep.topic("email")
    end = _end_offset(dep, topic)
    futures = admin.delete_records([TopicPartition(topic, 0, end // 3)])
    for future in futures.values():
        future.result(timeout=30)

    _truncate(dep, ["campaign_analytics", "lead_analytics"])
    proc = dep.run(
        "backfill", "--from", "2000-01-01", "--tables", "campaign_analytics,lead_analytics"
    )
    assert "retention deleted events before" in proc.stderr, proc.stderr
    complete_from = proc.stderr.split("retention deleted events before ")[1][:10]

    # (read before any worker restarts: a restart rewrites every row of its state)
    reference = reference_tables(reference_olap, wl)
    got = _olap_table(dep, "campaign_analytics")
    want = {
        tuple(_norm(x) for x in k): tuple(_norm(v) for v in row)
        for k, row in reference["campaign_analytics"].items()
    }
    assert got, f"no complete day was rewritten:\n{proc.stdout}\n{proc.stderr}"
    assert all(k[2] >= complete_from for k in got), "a day with deleted events was written"
    # the days it did write are exact (their events were all still retained)
    assert all(got[k] == want[k] for k in got)
    # lead totals are all-time: none can be recomputed once history is gone
    assert not _olap_table(dep, "lead_analytics")


def _end_offset(dep, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": dep.bootstrap, "group.id": "t-end"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=15)[1]
    finally:
        consumer.close()
