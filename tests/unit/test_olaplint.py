"""The OLAP boundary guard: good proposals pass, log-like ones fail naming the rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sluice.olap.lint import RULES, lint_sql, parse
from sluice.olap.migrations import available

DDL = Path(__file__).parent / "ddl"


# file -> rules that must be reported (more may be)
EXPECTED: dict[str, set[str]] = {
    # the spec's own examples of what must not be an OLAP table (§3.3, §3.4)
    "bad_analytics_access_audit.sql": {
        "event-grain",
        "log-like-name",
        "telemetry-column",
        "raw-payload",
        "undocumented-column",
    },
    "bad_analytics_connection_pools.sql": {"log-like-name", "runtime-config"},
    "bad_analytics_pool_metrics.sql": {"event-grain", "log-like-name", "telemetry-column"},
    "bad_analytics_rate_limits.sql": {"log-like-name", "runtime-config"},
    # admin UI clickstream (§2.1) and traces
    "bad_admin_ui_events.sql": {"event-grain", "ui-column"},
    "bad_request_traces.sql": {"event-grain", "raw-payload", "telemetry-column"},
    "bad_no_grain.sql": {"missing-grain"},
    # compliance tables: long retention, and allowed only when they say why
    "bad_audit_with_ttl.sql": {"compliance-retention"},
    "bad_audit_without_reason.sql": {"event-grain"},
}


def rules_of(path: Path) -> set[str]:
    return {p.rule for p in lint_sql(path.read_text())}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_log_like_proposals_are_rejected_with_the_rule_they_break(name):
    found = rules_of(DDL / name)
    assert EXPECTED[name] <= found, found


def test_every_bad_fixture_is_covered():
    assert {p.name for p in DDL.glob("bad_*.sql")} == set(EXPECTED)


@pytest.mark.parametrize("path", sorted(DDL.glob("good_*.sql")), ids=lambda p: p.name)
def test_aggregate_proposals_pass(path):
    assert lint_sql(path.read_text()) == []


@pytest.mark.parametrize("migration", available(), ids=lambda m: m.name)
def test_sluice_own_migrations_pass(migration):
    """CI gate: every table Sluice itself creates obeys the rules."""
    assert lint_sql(migration.sql) == []


def test_problems_name_the_rule_and_the_spec():
    problems = lint_sql((DDL / "bad_analytics_pool_metrics.sql").read_text())
    line = problems[0].format("x.sql")
    assert line.startswith("x.sql:")
    rule = RULES[problems[0].rule]
    assert rule.says in line and rule.ref in line
    cpu = [p for p in problems if "cpu_percent" in p.message]
    assert cpu and cpu[0].line == 8  # points at the column's line


def test_email_metrics_are_not_mistaken_for_ui_clicks():
    sql = """CREATE TABLE t (company_id String COMMENT 'c', day Date COMMENT 'd',
             clicked_tracked UInt64 COMMENT 'distinct emails clicked',
             inbox_placement_rate Float64 COMMENT 'rate') ENGINE = ReplacingMergeTree
             ORDER BY (company_id, day)"""
    assert lint_sql(sql) == []


def test_truncated_timestamps_make_an_aggregate_grain():
    sql = """CREATE TABLE t (company_id String COMMENT 'c', at DateTime COMMENT 'hour',
             n UInt64 COMMENT 'count') ENGINE = SummingMergeTree
             ORDER BY (company_id, toStartOfHour(at))"""
    assert lint_sql(sql) == []
    raw = sql.replace("toStartOfHour(at)", "at")
    assert {p.rule for p in lint_sql(raw)} == {"event-grain"}


def test_parser_reads_clickhouse_and_postgres_ddl():
    tables, errors = parse((MIGRATIONS / "003_compliance_and_system_events.sql").read_text())
    assert not errors
    audit = tables[0]
    assert audit.name == "admin_audit_log"
    assert [c for c, _ in audit.key] == ["tenant_id", "seq", "event_id"]
    assert "Compliance" in audit.comment and not audit.ttl
    assert all(c.comment for c in audit.columns)
    (pg,), _ = parse((DDL / "bad_analytics_access_audit.sql").read_text())
    assert [c for c, _ in pg.key] == ["id"]
    assert pg.columns[-1].type == "timestamptz"


def test_unreadable_statement_is_a_problem():
    problems = lint_sql("CREATE TABLE broken (a String COMMENT 'x'")
    assert [p.rule for p in problems] == ["parse-error"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sluice.cli", "olap", "lint", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_exit_codes():
    clean = run_cli(*map(str, sorted(MIGRATIONS.glob("*.sql"))))
    assert clean.returncode == 0 and clean.stdout.strip() == "ok", clean.stderr
    bad = run_cli(str(DDL / "bad_analytics_rate_limits.sql"))
    assert bad.returncode == 1
    lines = bad.stdout.strip().splitlines()
    assert lines and all("analytics_rate_limits" in line for line in lines)
    assert any("runtime-config" in line for line in lines)
