"""The CLI as a user meets it: clear one-line errors, idempotent admin commands."""

from __future__ import annotations

import json

import pytest

from dev.workload import email_workload, iso
from tests._sluice import Deployment
from topics.taxonomy import FAMILIES


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_produce_reports_bad_lines_by_number_and_sends_nothing(tmp_path):
    # no broker is contacted: validation fails first
    dep = Deployment("127.0.0.1:1", tmp_path)
    good = email_workload(emails=2, days=2, seed=1).events[0]
    path = write_lines(
        tmp_path / "events.jsonl",
        [
            json.dumps({**good, "occurred_at": iso(good["occurred_at"])}),
            "{not json",
            json.dumps({**good, "tenant_id": ""}),
            json.dumps({**good, "event_type": "email_teleported"}),
            "",
            json.dumps([1, 2]),
        ],
    )
    proc = dep.run("produce", "--file", str(path), check=False)
    assert proc.returncode == 1
    err = proc.stderr
    for lineno in (2, 3, 4, 6):
        assert f"events.jsonl:{lineno}:" in err, err
    assert "events.jsonl:1:" not in err
    assert "nothing was sent" in err
    assert "Traceback" not in err


def test_bad_input_is_one_clear_line(tmp_path):
    dep = Deployment("127.0.0.1:1", tmp_path)
    missing = dep.run("produce", "--file", str(tmp_path / "nope.jsonl"), check=False)
    assert missing.returncode != 0 and "no such file" in missing.stderr
    bad_url = Deployment("127.0.0.1:1", tmp_path)
    proc = bad_url.run("olap", "migrate", check=False, env_extra={"CLICKHOUSE_URL": "ftp://x"})
    assert proc.returncode == 1
    assert "CLICKHOUSE_URL" in proc.stderr and "Traceback" not in proc.stderr
    query = dep.run("olap", "query", "SELECT * FROM no_such_table", check=False)
    assert query.returncode == 1 and "Traceback" not in query.stderr
    assert "no_such_table" in query.stderr


def test_olap_migrate_is_idempotent(tmp_path):
    dep = Deployment("127.0.0.1:1", tmp_path)
    first = dep.run("olap", "migrate")
    assert "applied" in first.stdout
    second = dep.run("olap", "migrate")
    assert "up to date" in second.stdout
    tables = {r["name"] for r in dep.query("SHOW TABLES")}
    assert {"campaign_analytics", "campaign_analytics_v", "sluice_schema_migrations"} <= tables


@pytest.mark.kafka
def test_topics_create_is_idempotent_and_produce_summarises(kafka_bootstrap, tmp_path):
    dep = Deployment(kafka_bootstrap, tmp_path)
    # one per family, the dead letters, the state changelog, the erasure registry
    n_topics = len(FAMILIES) + 3
    first = dep.run("topics", "create")
    assert first.stdout.count("created") == n_topics
    second = dep.run("topics", "create")
    assert second.stdout.count("exists") == n_topics and "created" not in second.stdout
    events = email_workload(emails=20, days=2, seed=4).events
    proc = dep.produce(events)
    assert f"sent {len(events)} event(s)" in proc.stdout
