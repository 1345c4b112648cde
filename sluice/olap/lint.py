"""The OLAP boundary guard: lint table proposals against the spec's design rules.

The warehouse holds stable aggregates and a narrow compliance record, nothing else
(spec §1, §3.1, §3.4, §5; DESIGN §3). ``sluice olap lint FILE.sql`` reads every statement
of a proposal and prints one line per problem::

    FILE:LINE: error|warning [rule-id] table: what is wrong — the rule (spec §x)

**Severities** (:data:`RULES`). An *error* breaks the boundary: one row per event outside
a recognised compliance record, a log-like name, telemetry / UI / raw-payload /
runtime-config columns, no grain, a TTL on a compliance record, SQL that cannot be read.
A *warning* is a house convention: an undocumented table or column, naming style, an
engine that does not collapse rewrites. Errors fail the lint (exit 1); warnings are
printed and fail it only with ``--strict`` (:func:`lint_paths`).

**Compliance records** (spec §3.1, §3.4) are the one kind of table that may hold one row
per event. A table is recognised as one when it *declares* the purpose — its name or its
``COMMENT`` (clause, or ``COMMENT ON TABLE``) says audit, compliance, consent, erasure,
legal hold, data export, sensitive (data) access, data subject request — *and* it is
narrow: at most :data:`MAX_COMPLIANCE_COLUMNS` columns, none of them telemetry, UI,
payload or configuration, at most :data:`MAX_OFF_ROLE_COLUMNS` that are not about who /
what / when / target / outcome of the action (:data:`COMPLIANCE_ROLES`), and columns
saying who acted, when and what was done (:data:`REQUIRED_ROLES`). Saying
"compliance" is not enough: a log-like table that calls itself compliance is still
rejected, and the ``event-grain`` message names why (too wide, which telemetry or payload
columns). A compliance record must also be long-retention: a ``TTL`` on a table that
declares the purpose is its own error (``compliance-retention``). A table that declares a
notable-event summary (spec §3.2: notable, incident, maintenance) may be named
``..._events`` as long as its key is not one row per raw event.

**Reading** is sqlglot's: each statement is parsed in the first dialect that accepts it —
ClickHouse, then PostgreSQL, then MySQL, since proposals arrive in all three — and line
numbers come from sqlglot's tokens and identifiers. ``CREATE TABLE`` (with columns, or
``AS SELECT``), ``CREATE MATERIALIZED VIEW ... ENGINE`` (its inner table), ``ALTER TABLE``
(added columns, ``MODIFY TTL``/``COMMENT``) and ``COMMENT ON`` are checked; views, inserts
and other statements store nothing new and are skipped. Written by hand, and why:

* splitting a script into statements on sqlglot's tokens, so each statement gets its own
  dialect and a syntax error costs that statement only (``sqlglot.parse`` reads a whole
  script in one dialect and stops at the first error);
* the mapping of sqlglot's tree to a small :class:`TableProposal`, so that the rules are
  pure functions of plain data, testable without SQL;
* which key expressions truncate a timestamp to a period: sqlglot turns some ClickHouse
  functions into ``TimestampTrunc`` but leaves ``toDate``, ``toYYYYMM``,
  ``toStartOfInterval`` ... as anonymous calls, so a regex names those;
* the vocabulary (which name words mean telemetry, UI, payload, a compliance role): it is
  the spec's, no library has it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

Severity = Literal["error", "warning"]

# --------------------------------------------------------------------------------------
# The rules (a table a reader can audit in one screen)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One design rule: a stable id, how bad breaking it is, what it says, and where."""

    id: str
    severity: Severity
    says: str
    ref: str


RULES: Mapping[str, Rule] = {
    r.id: r
    for r in (
        # errors: the proposal breaks the boundary
        Rule(
            "event-grain",
            "error",
            "one row per event is a log, unless the table is a narrow compliance record",
            "spec §1, §3.1, §3.4, §5",
        ),
        Rule("log-like-name", "error", "the name says log, trace or stream", "spec §3.3, §3.4, §5"),
        Rule("telemetry-column", "error", "telemetry goes to observability", "spec §2.2, §2.3"),
        Rule("ui-column", "error", "admin UI interactions go to product analytics", "spec §2.1"),
        Rule(
            "raw-payload",
            "error",
            "raw payloads and request details are not mirrored into OLAP",
            "spec §4.3, §6.1",
        ),
        Rule("runtime-config", "error", "runtime configuration stays in config/OLTP", "spec §3.3"),
        Rule("missing-grain", "error", "an aggregate needs a period or a key", "spec §1, §5"),
        Rule(
            "compliance-retention",
            "error",
            "compliance records are long-retention: no TTL",
            "spec §1, §3.4",
        ),
        Rule("parse-error", "error", "a proposal must be readable to be checked", "spec §5"),
        # warnings: house conventions
        Rule("undocumented-column", "warning", "every column documents its meaning", "DESIGN §3"),
        Rule(
            "undocumented-table",
            "warning",
            "a table states its grain and purpose (COMMENT or a comment above it)",
            "DESIGN §3",
        ),
        Rule("naming-style", "warning", "names are lower snake_case", "DESIGN §2, §3"),
        Rule(
            "idempotent-engine",
            "warning",
            "OLAP writes are idempotent: ReplacingMergeTree on the grain (read with FINAL), "
            "or Summing/AggregatingMergeTree",
            "DESIGN §5",
        ),
        Rule(
            "unchecked-statement",
            "warning",
            "a statement the guard cannot read is not checked: review it by hand",
            "spec §5",
        ),
    )
}

# --------------------------------------------------------------------------------------
# Vocabulary: name words (a name split on "_", plus adjacent pairs) and what they indicate
# --------------------------------------------------------------------------------------

# fmt: off
EVENT_ID_COLUMNS: frozenset[str] = frozenset(
    {
        "id", "uuid", "event_id", "request_id", "trace_id", "span_id", "parent_span_id",
        "query_id", "log_id", "message_id", "session_id", "seq", "sequence", "offset",
        "row_id", "click_id", "hit_id", "alert_id", "sample_id", "heartbeat_id", "ping_id",
        "pageview_id",
    }
)
SURROGATE_KEYS: frozenset[str] = frozenset({"id", "uuid", "row_id"})
TELEMETRY_WORDS: Mapping[str, str] = {
    "duration": "a duration", "latency": "a latency", "elapsed": "an elapsed time",
    "cpu": "CPU usage", "memory": "memory usage", "mem": "memory usage", "heap": "heap usage",
    "gc": "garbage collection", "disk": "disk usage", "iops": "disk I/O",
    "scanned": "rows/bytes scanned", "pool": "connection pool state", "queue": "queue depth",
    "throughput": "throughput", "qps": "request rate", "rps": "request rate",
    "p50": "a latency percentile", "p90": "a latency percentile", "p95": "a latency percentile",
    "p99": "a latency percentile", "percentile": "a latency percentile",
    "complexity": "query complexity", "replicas": "autoscaling state",
    "autoscaling": "autoscaling state", "retries": "retries",
    "timeout": "timeouts", "timeouts": "timeouts", "connections": "connection counts",
    "uptime_seconds": "raw uptime", "node": "per-node metrics", "pod": "per-pod metrics",
    "host": "per-host metrics", "rows_read": "rows read", "bytes_read": "bytes read",
    "error_rate": "an error rate", "response_time": "a response time",
    "in_use": "connection pool state", "stack_trace": "a stack trace",
    "status_code": "HTTP status codes", "health_status": "health checks",
    "health_check": "health checks",
}
# "click"/"clicks" are not here: in an email product they are link clicks, a core metric.
UI_WORDS: Mapping[str, str] = {
    "page": "page views", "pages": "page views", "pageview": "page views",
    "pageviews": "page views", "button": "button clicks", "element": "UI elements",
    "filter": "filter changes", "keepalive": "session keep-alives", "session": "UI sessions",
    "scroll": "scrolling", "hover": "hovering", "viewport": "viewport", "screen": "screens",
    "referrer": "referrers", "route": "routes", "navigation": "navigation",
    "idle": "idle timers", "ui": "UI telemetry",
}
PAYLOAD_WORDS: Mapping[str, str] = {
    "payload": "a raw payload", "raw": "raw data", "body": "a message body",
    "json": "a JSON blob", "properties": "raw event properties", "headers": "headers",
    "log": "log lines", "message": "log messages", "sql": "query text",
    "query": "query text", "params": "request parameters", "user_agent": "user agents",
    "ip": "IP addresses", "ip_address": "IP addresses", "url": "URLs",
    "stacktrace": "stack traces", "metadata": "a free-form blob", "details": "a free-form blob",
    "extra": "a free-form blob", "attributes": "a free-form blob", "blob": "a free-form blob",
    "dump": "a free-form blob",
}
CONFIG_WORDS: Mapping[str, str] = {
    "limit": "limits", "limits": "limits", "quota": "quotas", "burst": "burst sizes",
    "max_connections": "pool configuration", "min_connections": "pool configuration",
    "pool_size": "pool configuration", "enabled": "feature switches",
    "config": "configuration", "setting": "settings", "settings": "settings",
    "threshold": "alert thresholds", "window_s": "rate-limit windows",
}
# Table-name words that say log, trace or operational stream.
LOG_NAME_WORDS: Mapping[str, str] = {
    "log": "a log", "logs": "a log", "trace": "traces", "traces": "traces", "span": "spans",
    "spans": "spans", "events": "raw events", "clickstream": "a clickstream",
    "pageviews": "page views", "metrics": "a metrics stream", "pool": "connection pools",
    "pools": "connection pools", "access": "an access log", "requests": "a request log",
    "queries": "a query log", "rate_limit": "rate limits", "rate_limits": "rate limits",
    "limits": "limits", "heartbeats": "heartbeats", "alerts": "raw alerts",
}
PERIOD_NAMES: frozenset[str] = frozenset(
    {"day", "date", "week", "month", "quarter", "year", "period", "period_start",
     "period_end", "hour", "bucket"}
)
# fmt: on
#: Column rules, most specific first: "max_connections" is configuration before telemetry.
COLUMN_RULES: tuple[tuple[str, Mapping[str, str]], ...] = (
    ("runtime-config", CONFIG_WORDS),
    ("telemetry-column", TELEMETRY_WORDS),
    ("ui-column", UI_WORDS),
    ("raw-payload", PAYLOAD_WORDS),
)
#: ClickHouse engines that collapse rows of one key (so a rewrite or a redelivery is a no-op).
IDEMPOTENT_ENGINES: frozenset[str] = frozenset(
    {
        "ReplacingMergeTree",
        "SummingMergeTree",
        "AggregatingMergeTree",
        "CollapsingMergeTree",
        "VersionedCollapsingMergeTree",
        "CoalescingMergeTree",
    }
)
#: ClickHouse engines the rule judges (InnoDB & co. are another database's business).
CLICKHOUSE_ENGINE = re.compile(r"^(\w*MergeTree|(Tiny|Stripe)?Log|Memory)$")
#: Key functions that truncate a timestamp to a period (sqlglot leaves many as Anonymous).
TRUNCATING_FUNCTIONS = re.compile(
    r"^(toDate|toDate32|toStartOf\w+|toMonday|toYYYYMM\w*|date_trunc|toYear|toMonth|date)$",
    re.IGNORECASE,
)
SNAKE_CASE = re.compile(r"^_?[a-z][a-z0-9_]*$")

# --------------------------------------------------------------------------------------
# Compliance records and notable-event summaries: data + pure functions, one screen
# --------------------------------------------------------------------------------------

#: What a table says about itself (name, COMMENT) to declare a compliance
#: purpose (spec §3.1: high-risk admin actions; §3.4: sensitive access, data exports; and
#: the same kind of record for consent, erasure and legal holds).
COMPLIANCE_PURPOSE = re.compile(
    r"\b(audit\w*|compliance|consents?|erasures?|legal holds?|data exports?"
    r"|sensitive (?:data )?access|data subject|dsar|gdpr)\b"
)
#: What declares a summary of notable events (spec §2.3, §3.2).
NOTABLE_PURPOSE = re.compile(r"\b(notable|incidents?|milestones?|maintenance)\b")

#: The widest a compliance record may be. The spec's audit row is who, as whom, what,
#: target (type + id), when, tenant, before/after summary (spec §3.1, DESIGN §3: 9
#: columns); an event id, a reason and a source make 12, a tamper-evidence hash pair 14-15
#: (Sluice's own admin_audit_log has 15). One more column of slack gives 16. Request logs
#: that call themselves audit carry agents, IPs, headers, URLs, timings: they are wider.
MAX_COMPLIANCE_COLUMNS = 16
#: Columns allowed that no role word explains (a domain field the vocabulary lacks, such
#: as a jurisdiction); three or more and the row describes something other than the action.
MAX_OFF_ROLE_COLUMNS = 2
#: The columns a compliance record is made of: who did what to which target, when, for
#: which tenant, with what outcome, and what proves the row (spec §3.1, §3.4).
COMPLIANCE_ROLES: Mapping[str, frozenset[str]] = {
    role: frozenset(vocabulary.split())
    for role, vocabulary in {
        "identity": "id uuid seq sequence key event",
        "tenant": "tenant company org organization account workspace",
        "who": "actor user admin operator principal subject requester approver impersonator "
        "by grantee owner lead contact customer",
        "when": "at time timestamp occurred date day created recorded effective expires "
        "until since started ended released",
        "what": "action kind type operation change category",
        "target": "target resource object record records scope data dataset export field "
        "fields entity purpose hold case matter count",
        "outcome": "outcome result status decision approved granted denied revoked approval "
        "reason ticket justification basis legal consent policy version channel jurisdiction",
        "state": "before after old new previous summary state",
        "integrity": "hash prev signature checksum",
        "provenance": "source",
    }.items()
}
#: What every compliance record answers (spec §3.1: who, what, when), by the roles above.
REQUIRED_ROLES: Mapping[str, frozenset[str]] = {
    "who acted": frozenset({"who"}),
    "when": frozenset({"when"}),
    "what was done": frozenset({"what", "outcome"}),
}
_RULE_NOUN = {
    "runtime-config": "configuration",
    "telemetry-column": "telemetry",
    "ui-column": "UI",
    "raw-payload": "payload",
}


def declared_purpose(table: TableProposal, purpose: re.Pattern[str]) -> str | None:
    """Where and how ``table`` declares ``purpose`` (``"'audit' in its name"``), or None.

    Only the name and the ``COMMENT`` declare: they are stored with the table. The prose
    above a statement does not ("-- not a compliance record" would otherwise declare one).
    """
    for where, text in (("name", table.name), ("COMMENT", table.comment)):
        m = purpose.search(text.lower().replace("_", " ").replace("-", " "))
        if m:
            return f"{m.group(0)!r} in its {where}"
    return None


def column_verdict(column: Column) -> tuple[str, str] | None:
    """(rule, what it looks like) if the column belongs outside OLAP, else None."""
    if column.kind == "json":
        return "raw-payload", "a JSON blob"
    for rule, vocabulary in COLUMN_RULES:
        hit = first_hit(column.name, vocabulary)
        if hit:
            return rule, hit
    return None


def roles(column: Column) -> set[str]:
    """The compliance roles a column's name speaks of (empty: none)."""
    said = set(words(column.name))
    return {role for role, vocabulary in COMPLIANCE_ROLES.items() if said & vocabulary}


def compliance_shortfalls(table: TableProposal) -> list[str]:
    """Why a table that declares a compliance purpose is not a narrow compliance record."""
    reasons: list[str] = []
    if len(table.columns) > MAX_COMPLIANCE_COLUMNS:
        reasons.append(f"{len(table.columns)} columns (at most {MAX_COMPLIANCE_COLUMNS})")
    by_rule: dict[str, list[str]] = {}
    off_role: list[str] = []
    covered: set[str] = set()
    for column in table.columns:
        verdict = column_verdict(column)
        if verdict:
            by_rule.setdefault(verdict[0], []).append(column.name)
        elif not roles(column):
            off_role.append(column.name)
        else:
            covered |= roles(column)
    for label, any_of in REQUIRED_ROLES.items():
        if not covered & any_of:
            reasons.append(f"no column says {label}")
    for rule, names in by_rule.items():
        plural = "s" if len(names) > 1 else ""
        reasons.append(f"{_RULE_NOUN[rule]} column{plural} {', '.join(names)}")
    if len(off_role) > MAX_OFF_ROLE_COLUMNS:
        reasons.append(
            f"columns not about who/what/when/target/outcome: {', '.join(off_role)} "
            f"(at most {MAX_OFF_ROLE_COLUMNS})"
        )
    return reasons


def is_compliance_record(table: TableProposal) -> bool:
    """Declared a compliance purpose, and narrow (TTL is judged on its own)."""
    declared = declared_purpose(table, COMPLIANCE_PURPOSE) is not None
    return declared and not compliance_shortfalls(table)


# --------------------------------------------------------------------------------------
# What the rules read: plain data
# --------------------------------------------------------------------------------------

ColumnKind = Literal["timestamp", "date", "json", ""]


@dataclass
class Column:
    """One column of a proposal."""

    name: str
    type: str  # as sqlglot writes it back in ClickHouse syntax ('' when not declared)
    comment: str | None
    line: int
    primary_key: bool = False
    kind: ColumnKind = ""  # what the rules need to know of the type


@dataclass
class TableProposal:
    """What the lint needs to know of one table."""

    name: str
    line: int
    columns: list[Column] = field(default_factory=list)
    order_by: list[tuple[str, bool]] = field(default_factory=list)  # (column, truncated)
    primary_key: list[tuple[str, bool]] = field(default_factory=list)
    unique: list[list[tuple[str, bool]]] = field(default_factory=list)
    engine: str = ""
    comment: str = ""  # COMMENT clause / COMMENT ON TABLE
    notes: str = ""  # the SQL comment block right above the statement
    ttl: bool = False
    dialect: str = ""  # the sqlglot dialect that read it
    partial: bool = False  # ALTER TABLE on a table this file does not create

    @property
    def key(self) -> list[tuple[str, bool]]:
        """The row identity: ClickHouse ORDER BY (what ReplacingMergeTree collapses on),
        else the primary key; a lone surrogate ``id`` yields to a UNIQUE constraint."""
        pk_columns = [(c.name, False) for c in self.columns if c.primary_key]
        key = self.order_by or self.primary_key or pk_columns
        if self.unique and len(key) == 1 and key[0][0].lower() in SURROGATE_KEYS:
            return self.unique[0]
        return key


def words(name: str) -> list[str]:
    """A name's adjacent pairs, then its words (pairs are more specific, so they come
    first): ``userAgentHash`` → user_agent, agent_hash, user, agent, hash."""
    snake = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()
    parts = [p for p in re.split(r"[^a-z0-9]+", snake) if p]
    return ["_".join(parts[i : i + 2]) for i in range(len(parts) - 1)] + parts


def first_hit(name: str, vocabulary: Mapping[str, str]) -> str | None:
    """What the first word of ``name`` found in ``vocabulary`` indicates."""
    for w in words(name):
        if w in vocabulary:
            return vocabulary[w]
    return None


# --------------------------------------------------------------------------------------
# Reading SQL with sqlglot
# --------------------------------------------------------------------------------------

#: Tried in order, per statement; the first that reads it wins.
DIALECTS: tuple[str, ...] = ("clickhouse", "postgres", "mysql")
_DIALECT_NAMES = {"clickhouse": "ClickHouse", "postgres": "PostgreSQL", "mysql": "MySQL"}
_TIMESTAMP_TYPES = exp.DataType.TEMPORAL_TYPES - {
    exp.DataType.Type.DATE,
    exp.DataType.Type.DATE32,
    exp.DataType.Type.TIME,
    exp.DataType.Type.TIMETZ,
}
_DATE_TYPES = {exp.DataType.Type.DATE, exp.DataType.Type.DATE32}
_JSON_TYPES = {
    exp.DataType.Type.JSON,
    exp.DataType.Type.JSONB,
    exp.DataType.Type.VARIANT,
    exp.DataType.Type.DYNAMIC,
}
_WRAPPER_TYPES = {exp.DataType.Type.LOWCARDINALITY}  # Nullable is an argument, not a wrapper


@dataclass(frozen=True)
class Statement:
    """One statement of a script: its text, the line it starts on, the comments above."""

    text: str
    line: int
    notes: str


@dataclass
class Reading:
    """What a script holds, as far as the rules care."""

    tables: list[TableProposal] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, message)
    unchecked: list[tuple[int, str]] = field(default_factory=list)


class _DropFallbackWarnings(logging.Filter):
    """sqlglot logs a warning whenever it falls back to an opaque Command; we try the next
    dialect instead, and report what none of them reads."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Falling back to parsing as a 'Command'" not in record.getMessage()


@contextmanager
def _quiet_sqlglot() -> Iterator[None]:
    logger, quiet = logging.getLogger("sqlglot"), _DropFallbackWarnings()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def split_statements(sql: str) -> tuple[list[Statement], tuple[int, str] | None]:
    """The statements of a script, split on sqlglot's ``;`` tokens, and (line, message)
    if the tail cannot be tokenized (an unterminated string, quoted name or comment)."""
    tokens: list[Token] = []
    failure: tuple[int, str] | None = None
    for name in DIALECTS:
        tokenizer = Dialect.get_or_raise(name).tokenizer()
        try:
            tokens, failure = tokenizer.tokenize(sql), None
            break
        except TokenError:
            if failure is None:  # keep the first dialect's partial tokens and position
                # XXX: ``tokens`` (what the tokenizer had read when it failed) is an
                # attribute, not documented API; TokenError carries no line. Without it
                # the error would point at line 1. Pinned by pyproject's sqlglot range.
                tokens = list(getattr(tokenizer, "tokens", []))
                line = tokens[-1].line if tokens else 1
                what = "an unterminated string, quoted name or comment?"
                failure = (line, f"cannot tokenize after line {line}: {what}")
    statements: list[Statement] = []
    current: list[Token] = []
    for token in tokens:
        if token.token_type != TokenType.SEMICOLON:
            current.append(token)
            continue
        if current:
            statements.append(_statement(sql, current))
        current = []
    if current and failure is None:
        statements.append(_statement(sql, current))
    return statements, failure


def _statement(sql: str, tokens: Sequence[Token]) -> Statement:
    first, last = tokens[0], tokens[-1]
    notes = " ".join(c.strip() for c in first.comments).strip()
    return Statement(sql[first.start : last.end + 1], first.line, notes)


class Unreadable(ValueError):
    """A statement no dialect reads, with the script line where reading failed."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


#: Statements that store rows: one sqlglot can only keep opaque is unreadable, not unchecked.
_STORES = re.compile(
    r"^CREATE\s+(OR\s+REPLACE\s+)?((TEMPORARY|TEMP)\s+)?(TABLE|MATERIALIZED\s+VIEW)\b",
    re.IGNORECASE,
)


def read_statement(statement: Statement) -> tuple[exp.Expr | None, str]:
    """The statement's tree and the dialect that read it; :class:`Unreadable` if none does.

    A statement sqlglot can only keep as an opaque ``Command`` counts as unread by that
    dialect, so the next one gets a try; if every dialect keeps it opaque, the Command is
    returned (an ALTER sqlglot does not model), except for a CREATE TABLE, which the lint
    must understand. The error reported is the one that got furthest into the statement.
    """
    failures: list[tuple[tuple[int, int], str]] = []
    command: tuple[exp.Expr, str] | None = None
    for name in DIALECTS:
        try:
            with _quiet_sqlglot():
                trees = sqlglot.parse(statement.text, read=name)
        except ParseError as exc:
            first = exc.errors[0] if exc.errors else {}
            where = (int(first.get("line") or 1), int(first.get("col") or 0))
            near = f" near {first['highlight']!r}" if first.get("highlight") else ""
            what = first.get("description") or str(exc).splitlines()[0]
            failures.append((where, f"{what}{near}"))
            continue
        except TokenError as exc:
            failures.append(((1, 0), str(exc).splitlines()[0]))
            continue
        tree = trees[0] if trees else None
        if isinstance(tree, exp.Command):
            command = command or (tree, name)
            continue
        return tree, name
    if command is not None and not _STORES.match(statement.text):
        return command
    dialects = ", ".join(_DIALECT_NAMES[d] for d in DIALECTS[:-1])
    dialects += f" or {_DIALECT_NAMES[DIALECTS[-1]]}"
    if not failures:
        raise Unreadable(f"sqlglot reads this statement in no detail ({dialects})", statement.line)
    (line, col), message = max(failures, key=lambda f: f[0])
    raise Unreadable(
        f"not valid {dialects}: {message} (col {col}; the statement starts on line "
        f"{statement.line})",
        statement.line + line - 1,
    )


#: ``ALTER TABLE t ADD COLUMN c ..., MODIFY ORDER BY (...)`` (a sorting key grows only by a
#: column the same ALTER adds): sqlglot keeps such an ALTER opaque, so the ``MODIFY ORDER
#: BY`` is split off, read on its own and becomes the table's key (checked like any key).
_MODIFY_ORDER_BY = re.compile(
    r"^(?P<alter>ALTER\s.+?),\s*MODIFY\s+ORDER\s+BY\s+(?P<key>.+?)\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)


def _split_order_by(statement: Statement) -> tuple[Statement, list[tuple[str, bool]] | None]:
    """The statement without a trailing ``MODIFY ORDER BY``, and that key's parts."""
    match = _MODIFY_ORDER_BY.match(statement.text)
    if match is None:
        return statement, None
    try:
        with _quiet_sqlglot():
            order = sqlglot.parse_one(f"SELECT 1 ORDER BY {match['key']}", read="clickhouse")
    except (ParseError, TokenError):
        return statement, None  # left whole: reported like any ALTER sqlglot cannot read
    node = order.args.get("order")
    if node is None:
        return statement, None
    return Statement(match["alter"], statement.line, statement.notes), _key_parts(
        o.this if isinstance(o, exp.Ordered) else o for o in node.expressions
    )


def read(sql: str) -> Reading:
    """Every table a script creates or alters, the statements it cannot read, and those it
    reads but cannot check."""
    reading = Reading()
    statements, failure = split_statements(sql)
    by_name: dict[str, TableProposal] = {}
    later: list[tuple[exp.Expr, Statement]] = []  # ALTER and COMMENT ON, applied last
    keys: dict[int, list[tuple[str, bool]]] = {}  # id(ALTER tree) -> its MODIFY ORDER BY
    for statement in statements:
        statement, new_key = _split_order_by(statement)
        try:
            tree, dialect = read_statement(statement)
        except Unreadable as exc:
            reading.errors.append((exc.line, str(exc)))
            continue
        if isinstance(tree, exp.Command):
            if str(tree.this).upper() in ("ALTER", "CREATE"):
                what = " ".join(statement.text.split()[:3])
                reading.unchecked.append((statement.line, f"{what} ... is not understood"))
        elif isinstance(tree, exp.Create):
            table = _from_create(tree, statement, dialect)
            if table is None and isinstance(tree.expression, exp.Table):
                copied = tree.expression.name
                what = f"CREATE TABLE ... AS {copied} copies a structure this file does not show"
                reading.unchecked.append((statement.line, what))
            if table is not None:
                reading.tables.append(table)
                by_name[table.name] = table
        elif isinstance(tree, (exp.Alter, exp.Comment)):
            later.append((tree, statement))
            if new_key is not None:
                keys[id(tree)] = new_key
    for tree, statement in later:
        if isinstance(tree, exp.Comment):
            _apply_comment(tree, by_name)
        elif isinstance(tree, exp.Alter) and tree.args.get("kind", "TABLE") == "TABLE":
            name = tree.this.name
            if name not in by_name:
                by_name[name] = TableProposal(name, statement.line, partial=True)
                reading.tables.append(by_name[name])
            _apply_alter(tree, statement, by_name[name])
            if id(tree) in keys:
                by_name[name].order_by = keys[id(tree)]
    if failure is not None:
        reading.errors.append(failure)
    return reading


def parse(sql: str) -> tuple[list[TableProposal], list[tuple[int, str]]]:
    """Every table of a script, and (line, message) of the statements it cannot read."""
    reading = read(sql)
    return reading.tables, reading.errors


def _line(node: exp.Expr | None, statement: Statement) -> int:
    """The script line of a node: sqlglot keeps the position on identifiers."""
    if node is not None and not isinstance(node, exp.Identifier):
        node = node.find(exp.Identifier)
    line = node.meta.get("line") if node is not None else None
    return statement.line + int(line) - 1 if line else statement.line


def _from_create(tree: exp.Create, statement: Statement, dialect: str) -> TableProposal | None:
    kind = str(tree.args.get("kind") or "").upper()
    props = tree.args.get("properties")
    prop_list = list(props.expressions) if props is not None else []
    if kind == "VIEW":  # a materialized view with its own ENGINE stores its inner table
        stores = any(isinstance(p, exp.EngineProperty) for p in prop_list) and not any(
            isinstance(p, exp.ToTableProperty) for p in prop_list
        )
        if not stores:
            return None
    elif kind != "TABLE":
        return None
    schema = tree.this if isinstance(tree.this, exp.Schema) else None
    target = schema.this if schema is not None else tree.this
    table = TableProposal(
        name=target.name,
        line=_line(target, statement),
        notes=statement.notes,
        dialect=dialect,
    )
    if schema is not None:
        for item in schema.expressions:
            if isinstance(item, exp.ColumnDef):
                table.columns.append(_column(item, statement, table))
            else:
                for node in item.walk():
                    if isinstance(node, exp.PrimaryKey):
                        table.primary_key = _key_parts(node.expressions)
                    elif isinstance(node, exp.UniqueColumnConstraint):
                        unique = node.this
                        if isinstance(unique, exp.Schema):
                            table.unique.append(_key_parts(unique.expressions))
    elif isinstance(tree.expression, exp.Query):  # CREATE TABLE/MATERIALIZED VIEW ... AS SELECT
        for select in tree.expression.selects:
            name = select.alias_or_name
            if name and name != "*":
                table.columns.append(Column(name, "", None, _line(select, statement)))
    else:
        return None  # CREATE TABLE t AS other: the structure of a table we cannot see
    for prop in prop_list:
        _apply_property(prop, table)
    return table


def _column(item: exp.ColumnDef, statement: Statement, table: TableProposal) -> Column:
    dtype = item.args.get("kind")
    column = Column(item.name, "", None, _line(item.this, statement))
    if isinstance(dtype, exp.DataType):
        column.type = dtype.sql(dialect="clickhouse")
        base = dtype
        while base.this in _WRAPPER_TYPES and base.expressions:
            inner = base.expressions[0]
            if not isinstance(inner, exp.DataType):
                break
            base = inner
        if base.this in _TIMESTAMP_TYPES:
            column.kind = "timestamp"
        elif base.this in _DATE_TYPES:
            column.kind = "date"
        elif base.this in _JSON_TYPES:
            column.kind = "json"
    for constraint in item.args.get("constraints") or []:
        kind = constraint.args.get("kind")
        if isinstance(kind, exp.CommentColumnConstraint):
            column.comment = kind.this.name
        elif isinstance(kind, exp.PrimaryKeyColumnConstraint):
            column.primary_key = True
        elif isinstance(kind, exp.MergeTreeTTL):
            table.ttl = True  # a column TTL deletes data too
    return column


def _apply_property(prop: exp.Expr, table: TableProposal) -> None:
    if isinstance(prop, exp.EngineProperty):
        table.engine = prop.this.name
    elif isinstance(prop, exp.Order):
        table.order_by = _key_parts(prop.expressions)
    elif isinstance(prop, exp.PrimaryKey):
        table.primary_key = _key_parts(prop.expressions)
    elif isinstance(prop, exp.MergeTreeTTL):
        table.ttl = True
    elif isinstance(prop, exp.SchemaCommentProperty):
        table.comment = prop.this.name


def _apply_comment(tree: exp.Comment, by_name: Mapping[str, TableProposal]) -> None:
    """``COMMENT ON TABLE t IS '...'`` / ``COMMENT ON COLUMN t.c IS '...'`` (PostgreSQL)."""
    text = tree.expression.name if tree.expression is not None else ""
    kind = str(tree.args.get("kind") or "").upper()
    target = tree.this
    if kind == "TABLE" and target.name in by_name:
        by_name[target.name].comment = text
    elif kind == "COLUMN" and isinstance(target, exp.Column) and target.table in by_name:
        for column in by_name[target.table].columns:
            if column.name == target.name:
                column.comment = text


def _apply_alter(tree: exp.Alter, statement: Statement, table: TableProposal) -> None:
    """Added columns join the table; ``MODIFY TTL`` and ``MODIFY COMMENT`` apply to it."""
    for action in tree.args.get("actions") or []:
        if isinstance(action, exp.ColumnDef):
            table.columns.append(_column(action, statement, table))
        elif action.find(exp.MergeTreeTTL) is not None:
            table.ttl = True
        else:
            comment = action.find(exp.SchemaCommentProperty)
            if comment is not None:
                table.comment = comment.this.name


def _key_parts(nodes: Iterable[exp.Expr]) -> list[tuple[str, bool]]:
    """Column names a key references, each with: is it inside a truncation to a period?"""
    parts: list[tuple[str, bool]] = []
    for node in nodes:
        if isinstance(node, exp.Identifier):
            parts.append((node.name, False))
            continue
        for column in node.find_all(exp.Column, bfs=False):
            parts.append((column.name, _truncated(column, node)))
    return parts


def _truncated(column: exp.Column, root: exp.Expr) -> bool:
    node = column.parent
    while node is not None:
        if isinstance(node, (exp.DateTrunc, exp.TimestampTrunc, exp.Date, exp.TsOrDsToDate)):
            return True
        if isinstance(node, exp.Cast) and node.to.this in _DATE_TYPES:
            return True
        if isinstance(node, exp.Anonymous) and TRUNCATING_FUNCTIONS.match(node.name):
            return True
        if node is root:
            return False
        node = node.parent
    return False


# --------------------------------------------------------------------------------------
# Checking: pure functions of a TableProposal
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One broken rule in one table (``table`` is empty for a statement we cannot read)."""

    line: int
    table: str
    rule: str
    message: str
    severity: Severity = "error"

    def format(self, path: str) -> str:
        """``FILE:LINE: severity [rule] table: message — the rule (reference)``."""
        rule = RULES[self.rule]
        who = f"{self.table}: " if self.table else ""
        return (
            f"{path}:{self.line}: {self.severity} [{self.rule}] {who}{self.message}"
            f" — {rule.says} ({rule.ref})"
        )


def event_grain(table: TableProposal) -> list[str]:
    """Why the key makes one row per event (empty: it does not)."""
    by_name = {c.name.lower(): c for c in table.columns}
    reasons = []
    for name, truncated in table.key:
        column = by_name.get(name.lower())
        if name.lower() in EVENT_ID_COLUMNS or name.lower().endswith("_event_id"):
            reasons.append(f"{name} identifies single events")
        elif column is not None and column.kind == "timestamp" and not truncated:
            reasons.append(f"{name} is a raw timestamp ({column.type})")
    return reasons


def check(table: TableProposal) -> list[Problem]:
    """Every rule ``table`` breaks, each problem with the rule's severity."""
    problems: list[Problem] = []

    def flag(rule: str, message: str, line: int | None = None) -> None:
        problems.append(
            Problem(line or table.line, table.name, rule, message, RULES[rule].severity)
        )

    compliance = declared_purpose(table, COMPLIANCE_PURPOSE)
    if not table.partial:
        shortfalls = compliance_shortfalls(table) if compliance else []
        record = compliance is not None and not shortfalls
        grain = event_grain(table)
        if grain and not record:
            if compliance:
                why = (
                    f"it declares a compliance purpose ({compliance}) but is not a narrow "
                    f"compliance record: {'; '.join(shortfalls)}"
                )
            else:
                why = (
                    "and it declares no compliance purpose (audit, compliance, consent, "
                    "erasure, legal hold, data export, sensitive access in its name or COMMENT)"
                )
            flag("event-grain", f"one row per event ({'; '.join(grain)}); {why}")
        notable = not grain and declared_purpose(table, NOTABLE_PURPOSE) is not None
        hit = first_hit(table.name, LOG_NAME_WORDS)
        if hit and not record and not notable:
            flag("log-like-name", f"the name says {hit}")
        has_period = any(
            c.name.lower() in PERIOD_NAMES or c.kind == "date" for c in table.columns
        ) or any(truncated for _, truncated in table.key)
        if not has_period and not table.key:
            flag("missing-grain", "no period column (day, month, ...) and no key")

    for column in table.columns:
        verdict = column_verdict(column)
        if verdict:
            flag(verdict[0], f"column {column.name!r} looks like {verdict[1]}", column.line)

    if compliance and table.ttl:
        flag("compliance-retention", f"a TTL would delete compliance records ({compliance})")

    # house conventions
    undocumented = [c for c in table.columns if not c.comment]
    if undocumented:
        names = ", ".join(c.name for c in undocumented)
        flag("undocumented-column", f"no COMMENT on {names}", undocumented[0].line)
    if not table.partial and not (table.comment or table.notes):
        flag("undocumented-table", "no COMMENT and no comment above the statement")
    badly_named = [n for n in (table.name, *(c.name for c in table.columns))]
    badly_named = [n for n in badly_named if not SNAKE_CASE.match(n)]
    if badly_named:
        flag("naming-style", f"not lower snake_case: {', '.join(map(repr, badly_named))}")
    engine = re.sub(r"^(Replicated|Shared)", "", table.engine)
    if CLICKHOUSE_ENGINE.match(engine) and engine not in IDEMPOTENT_ENGINES:
        flag(
            "idempotent-engine",
            f"ENGINE = {table.engine} does not collapse rows of one key: "
            "a redelivered or rewritten row counts twice",
        )
    return problems


def lint_sql(sql: str) -> list[Problem]:
    """Every problem of every table in a script, unreadable statements included."""
    reading = read(sql)
    problems = [Problem(line, "", "parse-error", message) for line, message in reading.errors]
    problems += [
        Problem(line, "", "unchecked-statement", message, "warning")
        for line, message in reading.unchecked
    ]
    for table in reading.tables:
        problems.extend(check(table))
    return sorted(problems, key=lambda p: (p.line, p.severity != "error", p.table, p.rule))


def lint_file(path: Path) -> list[str]:
    """Formatted problem lines for one file."""
    return [p.format(str(path)) for p in lint_sql(path.read_text(encoding="utf-8"))]


@dataclass(frozen=True)
class Report:
    """The lint of several files: the lines to print, the counts, the exit code."""

    lines: list[str]
    errors: int
    warnings: int
    strict: bool = False  # warnings fail too

    @property
    def exit_code(self) -> int:
        """1 if any error, or any warning when strict; else 0."""
        return 1 if self.errors or (self.strict and self.warnings) else 0

    def summary(self) -> str:
        """``ok``, ``ok (2 warnings)`` or ``failed: 1 error, 2 warnings``."""
        if not (self.errors or self.warnings):
            return "ok"
        counts = [f"{self.errors} error{'s' * (self.errors != 1)}"] if self.errors else []
        if self.warnings:
            counts.append(f"{self.warnings} warning{'s' * (self.warnings != 1)}")
        if not self.exit_code:
            return f"ok ({', '.join(counts)})"
        because = " (--strict: warnings fail)" if not self.errors else ""
        return f"failed: {', '.join(counts)}{because}"


def lint_paths(paths: Iterable[Path], *, strict: bool = False) -> Report:
    """Lint every file: what ``sluice olap lint [--strict]`` prints, and its exit code."""
    lines: list[str] = []
    errors = warnings = 0
    for path in paths:
        problems = lint_sql(path.read_text(encoding="utf-8"))
        lines += [p.format(str(path)) for p in problems]
        errors += sum(p.severity == "error" for p in problems)
        warnings += sum(p.severity == "warning" for p in problems)
    return Report(lines, errors, warnings, strict)
