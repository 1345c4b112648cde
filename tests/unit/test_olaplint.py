"""The OLAP boundary guard: errors for what breaks the boundary, warnings for house
conventions, and compliance records recognised by purpose and narrowness.

The fixtures in ``ddl/`` are proposals of other products (a marketplace, a learning
platform, an HR tool, a newsletter, an API gateway ...), in ClickHouse, PostgreSQL and
MySQL dialects, plus the spec's own counter-examples (§3.3, §3.4).
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sluice.olap.ddl import Target
from sluice.olap.lint import (
    COMPLIANCE_PURPOSE,
    MAX_COMPLIANCE_COLUMNS,
    RULES,
    Column,
    Report,
    TableProposal,
    check,
    compliance_shortfalls,
    declared_purpose,
    is_compliance_record,
    lint_file,
    lint_paths,
    lint_sql,
    parse,
    read,
    words,
)
from sluice.olap.migrations import Migration, available

DDL = Path(__file__).parent / "ddl"


def _migration(version: int) -> Migration:
    return next(m for m in available() if m.version == version)


LINE = re.compile(
    r"^(?P<file>\S+):(?P<line>\d+): (?P<severity>error|warning) \[(?P<rule>[a-z-]+)\] "
    r".+ \((spec|DESIGN) §[^)]*\)$"
)

# file -> (the error rules reported, the warning rules reported): exactly these.
EXPECTED: dict[str, tuple[set[str], set[str]]] = {
    # the spec's own examples of what must not be an OLAP table (§3.3, §3.4)
    "bad_analytics_access_audit.sql": (
        {"event-grain", "log-like-name", "telemetry-column", "raw-payload"},
        {"undocumented-column"},
    ),
    "bad_analytics_connection_pools.sql": (
        {"log-like-name", "runtime-config", "telemetry-column"},
        set(),
    ),
    "bad_analytics_pool_metrics.sql": (
        {"event-grain", "log-like-name", "telemetry-column", "runtime-config"},
        {"idempotent-engine", "undocumented-table"},
    ),
    "bad_analytics_rate_limits.sql": (
        {"log-like-name", "runtime-config"},
        {"undocumented-table"},
    ),
    # admin UI clickstream (§2.1) and traces
    "bad_admin_ui_events.sql": (
        {"event-grain", "log-like-name", "ui-column"},
        {"idempotent-engine", "undocumented-table"},
    ),
    "bad_request_traces.sql": (
        {"event-grain", "log-like-name", "raw-payload", "telemetry-column"},
        {"idempotent-engine", "undocumented-table"},
    ),
    "bad_no_grain.sql": ({"missing-grain"}, {"idempotent-engine", "undocumented-table"}),
    # compliance tables: long retention, and one row per event only when declared and narrow
    "bad_audit_with_ttl.sql": ({"compliance-retention"}, set()),
    "bad_audit_without_reason.sql": ({"event-grain"}, set()),
    "bad_ttl_audit.sql": ({"compliance-retention"}, set()),
    "bad_request_log_calls_itself_compliance.sql": (
        {"event-grain", "log-like-name", "telemetry-column", "raw-payload"},
        {"idempotent-engine"},
    ),
    "bad_access_events_compliance_pg.sql": (
        {"event-grain", "log-like-name", "raw-payload", "ui-column"},
        {"undocumented-column"},
    ),
    "bad_wide_audit_with_payloads.sql": ({"event-grain", "raw-payload"}, set()),
    "bad_event_log_named_audit.sql": ({"event-grain"}, set()),
    "bad_alter_adds_telemetry.sql": ({"raw-payload", "telemetry-column"}, set()),
    # logs, metrics and configuration under other names
    "bad_per_request_table.sql": ({"event-grain", "log-like-name"}, set()),
    "bad_metrics_stream.sql": (
        {"event-grain", "log-like-name", "telemetry-column"},
        {"idempotent-engine"},
    ),
    "bad_config_tables.sql": ({"runtime-config", "raw-payload"}, {"undocumented-column"}),
    # scripts: several statements, syntax errors
    "bad_mixed_statements.sql": (
        {"event-grain", "raw-payload"},
        {"idempotent-engine", "undocumented-column"},
    ),
    "bad_syntax_errors.sql": ({"parse-error", "event-grain", "ui-column"}, {"idempotent-engine"}),
    "bad_unterminated_string.sql": ({"parse-error"}, set()),
    # sound proposals: no error; conventions only where the proposal skips them
    "good_daily_usage.sql": (set(), set()),
    "good_monthly_capacity.sql": (set(), set()),
    "good_store_daily_orders.sql": (set(), set()),
    "good_course_weekly_learners.sql": (set(), set()),
    "good_pg_aggregates.sql": (set(), set()),
    "good_mysql_monthly_usage.sql": (set(), set()),
    "good_undocumented_aggregates.sql": (set(), {"undocumented-table", "undocumented-column"}),
    "good_compliance_record_clickhouse.sql": (set(), set()),
    "good_compliance_record_postgres.sql": (set(), set()),
    "good_consent_changes.sql": (set(), set()),
}


def rules_of(path: Path) -> tuple[set[str], set[str]]:
    problems = lint_sql(path.read_text())
    return (
        {p.rule for p in problems if p.severity == "error"},
        {p.rule for p in problems if p.severity == "warning"},
    )


def table(name: str, *columns: str, key: tuple[str, ...] = (), **kw) -> TableProposal:
    """A proposal without SQL: ``"name:kind"`` columns, documented, keyed by ``key``."""
    cols = []
    for n, spec in enumerate(columns, start=2):
        col, _, kind = spec.partition(":")
        cols.append(Column(col, kind, f"doc of {col}", n, kind=kind))  # type: ignore[arg-type]
    kw.setdefault("comment", "doc")
    return TableProposal(name, 1, cols, order_by=[(k, False) for k in key], **kw)


def rules(t: TableProposal) -> set[str]:
    return {p.rule for p in check(t)}


AUDIT_COLUMNS = (
    "tenant_id",
    "event_id",
    "occurred_at:timestamp",
    "actor_user_id",
    "action",
    "target_id",
    "outcome",
)
AUDIT_KEY = ("tenant_id", "occurred_at", "event_id")


# --- the fixtures ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_proposal_reports_exactly_its_rules(name):
    assert rules_of(DDL / name) == EXPECTED[name]


def test_every_fixture_is_covered():
    assert {p.name for p in DDL.glob("*.sql")} == set(EXPECTED)


@pytest.mark.parametrize("path", sorted(DDL.glob("good_*.sql")), ids=lambda p: p.name)
def test_sound_proposals_pass_with_at_most_warnings(path):
    assert all(p.severity == "warning" for p in lint_sql(path.read_text()))
    assert lint_paths([path]).exit_code == 0


@pytest.mark.parametrize("cluster", [None, "prod"])
def test_sluice_own_migrations_pass_clean(cluster):
    """CI gate (``make lint``): every table Sluice itself creates obeys the rules, in the
    single-node and the cluster rendering."""
    assert lint_sql("".join(m.sql for m in available(Target(cluster)))) == []


def test_sluice_compliance_tables_are_recognised_by_purpose_and_narrowness():
    tables, _ = parse(_migration(3).sql)
    by_name = {t.name: t for t in tables}
    assert is_compliance_record(by_name["admin_audit_log"])
    assert is_compliance_record(by_name["sensitive_access_log"])
    assert not is_compliance_record(by_name["admin_system_events"])  # a summary, not a record
    assert len(by_name["admin_audit_log"].columns) <= MAX_COMPLIANCE_COLUMNS


# --- the rules table ------------------------------------------------------------------


def test_every_rule_has_a_severity_and_a_reference():
    assert {r.severity for r in RULES.values()} == {"error", "warning"}
    errors = {r.id for r in RULES.values() if r.severity == "error"}
    assert errors == {
        "event-grain",
        "log-like-name",
        "telemetry-column",
        "ui-column",
        "raw-payload",
        "runtime-config",
        "missing-grain",
        "compliance-retention",
        "parse-error",
    }
    assert all(re.search(r"(spec|DESIGN) §", r.ref) for r in RULES.values())


def test_problem_lines_name_file_line_severity_rule_and_spec():
    path = DDL / "bad_analytics_pool_metrics.sql"
    lines = lint_file(path)
    assert lines and all(LINE.match(line) for line in lines), lines
    cpu = [line for line in lines if "cpu_percent" in line]
    assert cpu and cpu[0].startswith(f"{path}:8: error [telemetry-column]")  # the column's line
    rule = RULES["telemetry-column"]
    assert rule.says in cpu[0] and rule.ref in cpu[0]


# --- compliance records: data + pure functions ------------------------------------------


def test_a_declared_narrow_record_may_hold_one_row_per_event():
    record = table("payout_audit", *AUDIT_COLUMNS, key=AUDIT_KEY)
    assert is_compliance_record(record)
    assert rules(record) == set()


def test_one_row_per_event_without_a_declared_purpose_is_an_error():
    t = table("payout_actions", *AUDIT_COLUMNS, key=AUDIT_KEY)
    (problem,) = check(t)
    assert problem.rule == "event-grain" and problem.severity == "error"
    assert "declares no compliance purpose" in problem.message


@pytest.mark.parametrize(
    ("where", "declared"),
    [
        ({"name": "dsar_exports"}, True),
        ({"comment": "Consent changes, one row each"}, True),
        ({"comment": "Legal hold actions"}, True),
        ({"comment": "who ran a data export"}, True),
        ({"comment": "Sensitive-data access"}, True),
        ({"comment": "Erasure requests of data subjects"}, True),
        ({"comment": "payouts"}, False),
        # the prose above a statement does not declare: it may say "not compliance"
        ({"comment": "", "notes": "compliance audit trail"}, False),
    ],
)
def test_purpose_is_declared_by_name_or_comment(where, declared):
    t = table(where.pop("name", "payout_actions"), *AUDIT_COLUMNS, key=AUDIT_KEY, **where)
    assert (declared_purpose(t, COMPLIANCE_PURPOSE) is not None) is declared


def test_too_wide_a_record_is_not_narrow():
    extra = [f"target_field_{n}" for n in range(MAX_COMPLIANCE_COLUMNS - len(AUDIT_COLUMNS) + 1)]
    t = table("payout_audit", *AUDIT_COLUMNS, *extra, key=AUDIT_KEY)
    assert compliance_shortfalls(t) == [
        f"{MAX_COMPLIANCE_COLUMNS + 1} columns (at most {MAX_COMPLIANCE_COLUMNS})"
    ]
    assert rules(t) == {"event-grain"}
    assert is_compliance_record(table("payout_audit", *AUDIT_COLUMNS, *extra[1:], key=AUDIT_KEY))


@pytest.mark.parametrize(
    ("column", "reason"),
    [
        ("user_agent", "payload column user_agent"),
        ("request_body", "payload column request_body"),
        ("context:json", "payload column context"),
        ("latency_ms", "telemetry column latency_ms"),
        ("session_id", "UI column session_id"),
        ("retry_limit", "configuration column retry_limit"),
    ],
)
def test_a_record_with_a_log_column_is_not_narrow_and_says_which(column, reason):
    t = table("payout_audit", *AUDIT_COLUMNS, column, key=AUDIT_KEY)
    assert compliance_shortfalls(t) == [reason]
    grain = [p for p in check(t) if p.rule == "event-grain"]
    assert grain and reason in grain[0].message and "'audit' in its name" in grain[0].message


def test_off_role_columns_are_tolerated_up_to_two():
    two = table("payout_audit", *AUDIT_COLUMNS, "currency", "amount_cents", key=AUDIT_KEY)
    assert is_compliance_record(two)
    three = table(
        "payout_audit", *AUDIT_COLUMNS, "currency", "amount_cents", "carrier", key=AUDIT_KEY
    )
    assert compliance_shortfalls(three) == [
        "columns not about who/what/when/target/outcome: currency, amount_cents, carrier "
        "(at most 2)"
    ]


@pytest.mark.parametrize(
    ("drop", "missing"),
    [
        ("actor_user_id", "no column says who acted"),
        ("occurred_at:timestamp", "no column says when"),
        ("action", None),  # the outcome still says what was done
    ],
)
def test_a_record_says_who_when_and_what(drop, missing):
    columns = [c for c in AUDIT_COLUMNS if c != drop]
    t = table("payout_audit", *columns, key=("tenant_id", "event_id"))
    assert compliance_shortfalls(t) == ([missing] if missing else [])


def test_a_ttl_on_a_compliance_record_is_its_own_error():
    t = table("payout_audit", *AUDIT_COLUMNS, key=AUDIT_KEY, ttl=True)
    assert rules(t) == {"compliance-retention"}
    # a TTL on an aggregate is nobody's business here
    agg = table("payout_daily", "tenant_id", "day:date", "payouts", key=("tenant_id", "day"))
    agg.ttl = True
    assert rules(agg) == set()


def test_a_log_like_name_is_waived_only_for_a_recognised_record():
    assert "log-like-name" not in rules(table("export_audit_log", *AUDIT_COLUMNS, key=AUDIT_KEY))
    wide = table("export_audit_log", *AUDIT_COLUMNS, "user_agent", key=AUDIT_KEY)
    assert {"log-like-name", "event-grain", "raw-payload"} <= rules(wide)


def test_a_declared_notable_event_summary_may_be_named_events():
    summary = table(
        "platform_incident_events",
        "tenant_id",
        "incident_id",
        "opened_at:timestamp",
        "severity",
        key=("tenant_id", "incident_id"),
        comment="One row per notable incident",
    )
    assert rules(summary) == set()
    per_alert = table(
        "platform_alert_events",
        "tenant_id",
        "alert_id",
        "severity",
        key=("tenant_id", "alert_id"),
        comment="incident alerts",
    )
    assert rules(per_alert) == {"event-grain", "log-like-name"}


# --- grain ------------------------------------------------------------------------------


def test_email_metrics_are_not_mistaken_for_ui_clicks():
    sql = """CREATE TABLE t (company_id String COMMENT 'c', day Date COMMENT 'd',
             clicked_tracked UInt64 COMMENT 'distinct emails clicked',
             link_clicks UInt64 COMMENT 'link clicks',
             inbox_placement_rate Float64 COMMENT 'rate') ENGINE = ReplacingMergeTree
             ORDER BY (company_id, day) COMMENT 'daily'"""
    assert lint_sql(sql) == []


@pytest.mark.parametrize(
    "key",
    [
        "toStartOfHour(at)",
        "toDate(at)",
        "toYYYYMMDD(at)",
        "toStartOfInterval(at, INTERVAL 5 MINUTE)",
        "date_trunc('day', at)",
        "CAST(at AS Date)",
    ],
)
def test_truncated_timestamps_make_an_aggregate_grain(key):
    sql = f"""CREATE TABLE t (company_id String COMMENT 'c', at DateTime COMMENT 'hour',
             n UInt64 COMMENT 'count') ENGINE = SummingMergeTree
             ORDER BY (company_id, {key}) COMMENT 'per period'"""
    assert lint_sql(sql) == []
    raw = sql.replace(key, "at")
    assert {p.rule for p in lint_sql(raw)} == {"event-grain"}


def test_a_surrogate_id_yields_to_a_unique_grain():
    sql = """CREATE TABLE daily_totals (id bigserial PRIMARY KEY, day date, tenant_id text,
             n integer{unique});
             COMMENT ON TABLE daily_totals IS 'per tenant per day'"""
    (t,), _ = parse(sql.format(unique=", UNIQUE (tenant_id, day)"))
    assert [c for c, _ in t.key] == ["tenant_id", "day"]
    assert {p.rule for p in lint_sql(sql.format(unique=""))} == {
        "event-grain",
        "undocumented-column",
    }


# --- reading: dialects, statements, lines -----------------------------------------------


def test_parser_reads_clickhouse_postgres_and_mysql_ddl():
    tables, errors = parse(_migration(3).sql)
    assert not errors
    audit = tables[0]
    assert audit.name == "admin_audit_log" and audit.dialect == "clickhouse"
    assert [c for c, _ in audit.key] == ["tenant_id", "seq", "event_id"]
    assert "Compliance" in audit.comment and not audit.ttl
    assert all(c.comment for c in audit.columns)
    (pg,), _ = parse((DDL / "bad_analytics_access_audit.sql").read_text())
    assert [c for c, _ in pg.key] == ["id"]
    assert pg.columns[-1].name == "accessed_at" and pg.columns[-1].kind == "timestamp"
    seats = parse((DDL / "good_pg_aggregates.sql").read_text())[0][1]
    assert seats.dialect == "postgres"  # bigserial: ClickHouse's reader refuses it
    assert seats.comment and all(c.comment for c in seats.columns)  # COMMENT ON applied
    (my,), _ = parse((DDL / "good_mysql_monthly_usage.sql").read_text())
    assert my.dialect == "mysql" and my.engine == "InnoDB" and my.comment
    assert [c for c, _ in my.key] == ["account_id", "month"]


def test_statements_other_than_tables_are_skipped_and_lines_kept():
    reading = read((DDL / "bad_mixed_statements.sql").read_text())
    assert [t.name for t in reading.tables] == ["link_daily_clicks", "link_clicks_copy"]
    problems = lint_sql((DDL / "bad_mixed_statements.sql").read_text())
    assert {(p.line, p.rule) for p in problems if p.severity == "error"} == {
        (26, "event-grain"),  # the materialized view that stores its own rows
        (29, "raw-payload"),  # its url column, on the AS SELECT line
    }
    assert all(p.table == "link_clicks_copy" for p in problems)


def test_a_syntax_error_costs_its_statement_only():
    problems = lint_sql((DDL / "bad_syntax_errors.sql").read_text())
    errors = [(p.line, p.rule, p.table) for p in problems if p.rule == "parse-error"]
    assert errors == [(16, "parse-error", ""), (31, "parse-error", "")]
    assert "starts on line 13" in problems[0].message
    assert {p.table for p in problems if p.rule != "parse-error"} == {"page_views"}


def test_an_unterminated_string_is_reported_where_it_starts():
    problems = lint_sql((DDL / "bad_unterminated_string.sql").read_text())
    assert [(p.line, p.rule) for p in problems] == [(14, "parse-error")]


def test_unreadable_statement_is_an_error():
    problems = lint_sql("CREATE TABLE broken (a String COMMENT 'x'")
    assert [p.rule for p in problems] == ["parse-error"]


def test_an_alter_joins_the_table_it_alters():
    sql = (DDL / "good_compliance_record_clickhouse.sql").read_text()
    widened = sql + "\nALTER TABLE hr_record_access_audit ADD COLUMN user_agent String;\n"
    assert {p.rule for p in lint_sql(widened)} == {
        "event-grain",  # no longer narrow: it has a payload column
        "log-like-name",  # so "access" in its name counts again
        "raw-payload",
        "undocumented-column",
    }


def test_an_alter_sqlglot_cannot_model_is_a_warning_not_a_pass():
    problems = lint_sql("ALTER TABLE t COMMENT COLUMN a 'doc';\nOPTIMIZE TABLE t FINAL;")
    assert [(p.line, p.rule, p.severity) for p in problems] == [
        (1, "unchecked-statement", "warning")
    ]


def test_a_copied_structure_is_a_warning_not_a_pass():
    (problem,) = lint_sql("CREATE TABLE t2 AS t ENGINE = ReplacingMergeTree ORDER BY a")
    assert (problem.rule, problem.severity) == ("unchecked-statement", "warning")


def test_naming_style_is_a_warning():
    sql = """CREATE TABLE "DailyTotals" ("TenantId" String COMMENT 't', day Date COMMENT 'd')
             ENGINE = ReplacingMergeTree ORDER BY ("TenantId", day) COMMENT 'per day'"""
    (problem,) = lint_sql(sql)
    assert problem.rule == "naming-style" and problem.severity == "warning"
    assert "'DailyTotals', 'TenantId'" in problem.message


def test_sqlglot_fallback_warnings_are_not_printed(caplog):
    with caplog.at_level(logging.WARNING, logger="sqlglot"):
        lint_sql((DDL / "good_mysql_monthly_usage.sql").read_text())
    assert not [r for r in caplog.records if "Falling back" in r.getMessage()]


def test_words_put_pairs_first():
    assert words("userAgentHash") == ["user_agent", "agent_hash", "user", "agent", "hash"]


# --- the report and the CLI ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("errors", "warnings", "strict", "code", "summary"),
    [
        (0, 0, False, 0, "ok"),
        (0, 2, False, 0, "ok (2 warnings)"),
        (0, 1, True, 1, "failed: 1 warning (--strict: warnings fail)"),
        (1, 2, False, 1, "failed: 1 error, 2 warnings"),
        (0, 0, True, 0, "ok"),
    ],
)
def test_report_exit_code_and_summary(errors, warnings, strict, code, summary):
    report = Report([], errors, warnings, strict)
    assert (report.exit_code, report.summary()) == (code, summary)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", "olap", "lint", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_clean_files_exit_0_with_ok(tmp_path):
    own = tmp_path / "sluice.sql"
    own.write_text("".join(m.sql for m in available()))
    clean = run_cli(str(own))
    assert clean.returncode == 0 and clean.stdout.strip() == "ok", clean.stderr


def test_cli_warnings_exit_0_unless_strict():
    path = str(DDL / "good_undocumented_aggregates.sql")
    lenient = run_cli(path)
    assert lenient.returncode == 0, lenient.stderr
    *lines, summary = lenient.stdout.strip().splitlines()
    assert summary == "ok (4 warnings)"
    assert lines and all(LINE.match(line) and " warning [" in line for line in lines), lines
    strict = run_cli("--strict", path)
    assert strict.returncode == 1
    assert strict.stdout.strip().splitlines()[-1] == "failed: 4 warnings (--strict: warnings fail)"


def test_cli_errors_exit_1_and_name_the_rule():
    bad = run_cli(
        str(DDL / "good_store_daily_orders.sql"), str(DDL / "bad_analytics_rate_limits.sql")
    )
    assert bad.returncode == 1
    *lines, summary = bad.stdout.strip().splitlines()
    assert summary == "failed: 3 errors, 1 warning"
    assert all(LINE.match(line) and "analytics_rate_limits" in line for line in lines)
    assert any(" error [runtime-config] " in line for line in lines)
