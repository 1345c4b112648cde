"""The OLAP boundary guard: lint ``CREATE TABLE`` proposals against the spec's design rules.

The warehouse holds stable aggregates and a narrow compliance record, nothing else
(spec §1, §3, §5; DESIGN §3). A proposal that resembles logs, traces or raw events is
rejected, each problem naming the rule it broke — ``sluice olap lint FILE.sql``.

The rules are data (:data:`RULES`) applied by pure functions; the parser understands the
ClickHouse dialect Sluice uses and the usual PostgreSQL-style DDL of proposals (column
``PRIMARY KEY``, table-level ``PRIMARY KEY (...)``). Statements other than
``CREATE TABLE`` (views, inserts) are skipped.

What the rules look at, per table:

* **grain** — the row identity is the ``ORDER BY``/``PRIMARY KEY`` columns. An event
  identity (``event_id``, ``request_id``, ``trace_id``, ``span_id``, a sequence number, a
  surrogate ``id``) or a raw timestamp (not truncated to a day/hour/month) in it means
  one row per event. Only the compliance tables of :data:`EVENT_GRAIN_ALLOWED` may do
  that, and only if their name or comment says why.
* **columns** — infra/query telemetry, UI interaction fields, raw payloads and runtime
  configuration belong to observability, product analytics or config (spec §2, §3.3).
* **aggregate grain** — a table with neither a period column nor a key is no aggregate.
* **retention** — compliance records are long-retention: no ``TTL``.
* **documentation** — every column carries a ``COMMENT`` (DESIGN §3).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# --------------------------------------------------------------------------------------
# The rules (a table a reader can audit in one screen)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One design rule: a stable id, what it says, and where the spec says it."""

    id: str
    says: str
    ref: str


RULES: Mapping[str, Rule] = {
    r.id: r
    for r in (
        Rule(
            "event-grain",
            "one row per raw event is a log, not an aggregate",
            "spec §4.3, §5; DESIGN §3",
        ),
        Rule(
            "log-like-name",
            "the table is named like a log, trace or metrics stream",
            "spec §3.3, §3.4, §4.3",
        ),
        Rule(
            "telemetry-column",
            "infra and query telemetry goes to observability",
            "spec §2.2, §2.3, §3.3",
        ),
        Rule("ui-column", "admin UI interactions go to product analytics", "spec §2.1"),
        Rule(
            "raw-payload",
            "raw event payloads and request details are not mirrored into OLAP",
            "spec §4.3, §6.1",
        ),
        Rule("runtime-config", "runtime configuration stays in config/OLTP", "spec §3.3, §5"),
        Rule(
            "missing-grain", "an aggregate needs a grain: a period column or a key", "spec §1, §5"
        ),
        Rule(
            "compliance-retention", "compliance records are long-retention: no TTL", "spec §1, §3.4"
        ),
        Rule("undocumented-column", "every column documents its meaning (COMMENT)", "DESIGN §3"),
        Rule("parse-error", "the statement could not be read as CREATE TABLE", "-"),
    )
}


@dataclass(frozen=True)
class Allowance:
    """A table that may hold one row per event, and the words that must say why."""

    reason: str
    words: tuple[str, ...]


#: Tables allowed one row per event: compliance facts and notable-event summaries.
EVENT_GRAIN_ALLOWED: Mapping[str, Allowance] = {
    "admin_audit_log": Allowance(
        "spec §3.1: compliance-centric, high-risk admin actions", ("compliance", "audit")
    ),
    "sensitive_access_log": Allowance(
        "spec §3.4: narrow long-retention record of sensitive access and exports",
        ("compliance", "audit"),
    ),
    "admin_system_events": Allowance(
        "spec §2.3, §3.2: one row per notable event or incident, never per alert",
        ("notable", "incident"),
    ),
}

# Column words (a column name split on "_"), each with what it indicates.
# fmt: off
EVENT_ID_COLUMNS: frozenset[str] = frozenset(
    {
        "id", "uuid", "event_id", "request_id", "trace_id", "span_id", "parent_span_id",
        "query_id", "log_id", "message_id", "session_id", "seq", "sequence", "offset",
        "row_id", "click_id", "hit_id",
    }
)
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
    "host": "per-host metrics",
}
TELEMETRY_PHRASES: Mapping[str, str] = {
    "rows_read": "rows read", "bytes_read": "bytes read", "error_rate": "an error rate",
    "response_time": "a response time", "in_use": "connection pool state",
    "stack_trace": "a stack trace", "status_code": "HTTP status codes",
    "health_status": "health checks", "health_check": "health checks",
}
UI_WORDS: Mapping[str, str] = {
    "page": "page views", "pages": "page views", "pageview": "page views",
    "pageviews": "page views", "button": "button clicks", "click": "clicks",
    "clicks": "clicks", "element": "UI elements", "filter": "filter changes",
    "keepalive": "session keep-alives", "session": "UI sessions", "scroll": "scrolling",
    "hover": "hovering", "viewport": "viewport", "screen": "screens", "referrer": "referrers",
    "route": "routes", "navigation": "navigation", "idle": "idle timers", "ui": "UI telemetry",
}
PAYLOAD_WORDS: Mapping[str, str] = {
    "payload": "a raw payload", "raw": "raw data", "body": "a message body",
    "json": "a JSON blob", "properties": "raw event properties", "headers": "headers",
    "log": "log lines", "message": "log messages", "sql": "query text",
    "query": "query text", "user_agent": "user agents", "ip": "IP addresses",
    "ip_address": "IP addresses", "url": "URLs", "stacktrace": "stack traces",
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
    "queries": "a query log", "rate": "rate limits", "limits": "rate limits",
    "heartbeats": "heartbeats", "alerts": "raw alerts",
}
PERIOD_NAMES: frozenset[str] = frozenset(
    {"day", "date", "week", "month", "quarter", "year", "period", "period_start",
     "period_end", "hour", "bucket"}
)
# fmt: on
PERIOD_TYPES = re.compile(r"^(Date|Date32)\b|^date\b", re.IGNORECASE)
TIMESTAMP_TYPES = re.compile(r"^(DateTime|DateTime64|timestamp|timestamptz)\b", re.IGNORECASE)
_WRAPPERS = re.compile(
    r"^(Nullable|LowCardinality|SimpleAggregateFunction\(\w+,)\s*\(?", re.IGNORECASE
)
TRUNCATING_FUNCTIONS = re.compile(
    r"^(toDate|toStartOf\w+|toMonday|toYYYYMM\w*|date_trunc|toYear|toMonth)$", re.IGNORECASE
)


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------


@dataclass
class Column:
    name: str
    type: str
    comment: str | None
    line: int
    primary_key: bool = False


@dataclass
class TableProposal:
    """What the lint needs to know of one CREATE TABLE."""

    name: str
    line: int
    columns: list[Column] = field(default_factory=list)
    order_by: list[tuple[str, bool]] = field(default_factory=list)  # (column, truncated)
    primary_key: list[tuple[str, bool]] = field(default_factory=list)
    engine: str = ""
    comment: str = ""  # COMMENT clause plus the -- comments right above the statement
    ttl: bool = False

    @property
    def key(self) -> list[tuple[str, bool]]:
        key = self.primary_key or self.order_by
        cols = [(c.name, False) for c in self.columns if c.primary_key]
        return key or cols


@dataclass(frozen=True)
class Token:
    kind: str  # word | string | punct
    text: str
    line: int


_TOKEN = re.compile(
    r"(?P<ws>\s+)|(?P<comment>--[^\n]*|/\*.*?\*/)"
    r"|(?P<string>'(?:[^'\\]|\\.|'')*')"
    r"|(?P<quoted>`[^`]*`|\"[^\"]*\")"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_$]*|\d+(?:\.\d+)?)"
    r"|(?P<punct>.)",
    re.DOTALL,
)


def tokenize(sql: str) -> list[Token | tuple[str, str, int]]:
    """Tokens with line numbers; comments kept as ('comment', text, line) markers."""
    out: list[Token | tuple[str, str, int]] = []
    line = 1
    for m in _TOKEN.finditer(sql):
        kind, text = m.lastgroup or "", m.group()
        if kind == "comment":
            out.append(("comment", text, line))
        elif kind == "string":
            out.append(Token("string", text[1:-1].replace("''", "'").replace("\\'", "'"), line))
        elif kind == "quoted":
            out.append(Token("word", text[1:-1], line))
        elif kind in ("word", "punct"):
            out.append(Token(kind, text, line))
        line += text.count("\n")
    return out


class ParseError(ValueError):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


_CLAUSES = {"ENGINE", "ORDER", "PRIMARY", "PARTITION", "SAMPLE", "TTL", "SETTINGS", "COMMENT", "AS"}
_COLUMN_STOP = {
    "COMMENT",
    "DEFAULT",
    "MATERIALIZED",
    "ALIAS",
    "EPHEMERAL",
    "CODEC",
    "TTL",
    "NOT",
    "NULL",
    "PRIMARY",
    "REFERENCES",
    "CHECK",
    "UNIQUE",
    "CONSTRAINT",
    "COLLATE",
    "GENERATED",
}
_NON_COLUMNS = {"INDEX", "CONSTRAINT", "PROJECTION", "PRIMARY", "UNIQUE", "FOREIGN", "CHECK"}


def parse(sql: str) -> tuple[list[TableProposal], list[tuple[int, str]]]:
    """Every CREATE TABLE of a script, and (line, message) of statements it cannot read."""
    tables: list[TableProposal] = []
    errors: list[tuple[int, str]] = []
    for comments, tokens in _statements(tokenize(sql)):
        words = [t.text.upper() for t in tokens[:6] if t.kind == "word"]
        if len(words) < 2 or words[0] != "CREATE":
            continue
        rest = [w for w in words[1:] if w not in {"OR", "REPLACE", "TEMPORARY", "TEMP"}]
        if not rest or rest[0] != "TABLE":
            continue  # views, databases, functions: not tables
        try:
            table = _parse_table(tokens)
        except ParseError as exc:
            errors.append((exc.line, str(exc)))
            continue
        table.comment = " ".join([*comments, table.comment]).strip()
        tables.append(table)
    return tables, errors


def _statements(tokens: list) -> Iterable[tuple[list[str], list[Token]]]:
    """Split on ``;``; each statement with the ``--`` comment block just above it."""
    comments: list[str] = []
    current: list[Token] = []
    for tok in tokens:
        if isinstance(tok, tuple):
            if not current:
                comments.append(tok[1].lstrip("-/* ").rstrip("*/ "))
            continue
        if tok.kind == "punct" and tok.text == ";":
            if current:
                yield comments, current
            comments, current = [], []
            continue
        current.append(tok)
    if current:
        yield comments, current


def _parse_table(tokens: list[Token]) -> TableProposal:
    i = 0
    while i < len(tokens) and tokens[i].text.upper() != "TABLE":
        i += 1
    i += 1
    if i + 2 < len(tokens) and [t.text.upper() for t in tokens[i : i + 3]] == [
        "IF",
        "NOT",
        "EXISTS",
    ]:
        i += 3
    if i >= len(tokens) or tokens[i].kind != "word":
        raise ParseError("expected a table name", tokens[-1].line)
    name, line = tokens[i].text, tokens[i].line
    i += 1
    while i + 1 < len(tokens) and tokens[i].text == ".":  # db.table
        name = tokens[i + 1].text
        i += 2
    if (
        i + 1 < len(tokens)
        and tokens[i].text.upper() == "ON"
        and tokens[i + 1].text.upper() == "CLUSTER"
    ):
        i += 3
    table = TableProposal(name=name, line=line)
    if i >= len(tokens) or tokens[i].text != "(":
        raise ParseError(f"{name}: expected '(' and column definitions", line)
    body, i = _balanced(tokens, i)
    for item in _split_commas(body):
        _parse_item(table, item)
    if not table.columns:
        raise ParseError(f"{name}: no columns", line)
    _parse_clauses(table, tokens[i:])
    return table


def _balanced(tokens: list[Token], start: int) -> tuple[list[Token], int]:
    """Tokens inside the parenthesis at ``start``, and the index after its closing one."""
    depth = 0
    for j in range(start, len(tokens)):
        if tokens[j].text == "(":
            depth += 1
        elif tokens[j].text == ")":
            depth -= 1
            if depth == 0:
                return tokens[start + 1 : j], j + 1
    raise ParseError("unbalanced parentheses", tokens[start].line)


def _split_commas(tokens: list[Token]) -> list[list[Token]]:
    items: list[list[Token]] = [[]]
    depth = 0
    for tok in tokens:
        if tok.text in "([":
            depth += 1
        elif tok.text in ")]":
            depth -= 1
        if tok.text == "," and depth == 0:
            items.append([])
        else:
            items[-1].append(tok)
    return [item for item in items if item]


def _parse_item(table: TableProposal, item: list[Token]) -> None:
    head = item[0].text.upper()
    if head in _NON_COLUMNS and item[0].kind == "word":
        if head == "PRIMARY" and len(item) > 2:  # PRIMARY KEY (a, b)
            table.primary_key = _key_columns(item[2:])
        return
    col = Column(name=item[0].text, type="", comment=None, line=item[0].line)
    type_tokens: list[str] = []
    j = 1
    depth = 0
    while j < len(item):
        tok = item[j]
        if depth == 0 and tok.kind == "word" and tok.text.upper() in _COLUMN_STOP:
            break
        depth += tok.text == "("
        depth -= tok.text == ")"
        type_tokens.append(tok.text)
        j += 1
    col.type = _join_type(type_tokens)
    while j < len(item):
        word = item[j].text.upper()
        if word == "COMMENT" and j + 1 < len(item) and item[j + 1].kind == "string":
            col.comment = item[j + 1].text
            j += 2
            continue
        if word == "PRIMARY":
            col.primary_key = True
        j += 1
    table.columns.append(col)


def _join_type(parts: list[str]) -> str:
    """``['Nullable', '(', 'DateTime64', '(', '3', ',', 'UTC', ')', ')']`` → readable text."""
    out = ""
    for t in parts:
        if out and t not in {"(", ")", ","} and not out.endswith("("):
            out += " "
        out += t
    return out


def _parse_clauses(table: TableProposal, tokens: list[Token]) -> None:
    i = 0
    while i < len(tokens):
        word = tokens[i].text.upper() if tokens[i].kind == "word" else ""
        if word not in _CLAUSES:
            i += 1
            continue
        j = i + 1
        depth = 0
        while j < len(tokens):
            t = tokens[j]
            if depth == 0 and t.kind == "word" and t.text.upper() in _CLAUSES and j > i + 1:
                break
            depth += t.text == "("
            depth -= t.text == ")"
            j += 1
        clause = tokens[i + 1 : j]
        if word == "ORDER":
            table.order_by = _key_columns(clause[1:])  # skip BY
        elif word == "PRIMARY":
            table.primary_key = _key_columns(clause[1:])  # skip KEY
        elif word == "ENGINE":
            table.engine = "".join(t.text for t in clause if t.text != "=")
        elif word == "TTL":
            table.ttl = True
        elif word == "COMMENT":
            table.comment = " ".join(t.text for t in clause if t.kind == "string")
        i = j


def _key_columns(tokens: list[Token]) -> list[tuple[str, bool]]:
    """Column names a key expression references, each with: is it inside a truncation?"""
    out: list[tuple[str, bool]] = []
    stack: list[bool] = []  # truncating? per open parenthesis
    for n, tok in enumerate(tokens):
        nxt = tokens[n + 1].text if n + 1 < len(tokens) else ""
        if tok.text == "(":
            prev = tokens[n - 1] if n else None
            fn = prev.text if prev is not None and prev.kind == "word" else ""
            stack.append(bool(TRUNCATING_FUNCTIONS.match(fn)) or (bool(stack) and stack[-1]))
        elif tok.text == ")":
            if stack:
                stack.pop()
        elif tok.kind == "word" and nxt != "(" and not tok.text[0].isdigit():
            if tok.text.upper() in {"TUPLE", "ASC", "DESC", "NULLS", "FIRST", "LAST"}:
                continue
            out.append((tok.text, bool(stack) and stack[-1]))
    return out


# --------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One broken rule in one table."""

    line: int
    table: str
    rule: str
    message: str

    def format(self, path: str) -> str:
        rule = RULES[self.rule]
        where = f"{path}:{self.line}: {self.table}"
        return f"{where}: {self.rule}: {self.message} — {rule.says} [{rule.ref}]"


def base_type(column_type: str) -> str:
    """The type without Nullable/LowCardinality wrappers: ``Nullable(Date)`` → ``Date)``."""
    previous = None
    while previous != column_type:
        previous, column_type = column_type, _WRAPPERS.sub("", column_type, count=1).strip()
    return column_type


def words(name: str) -> list[str]:
    """A name's words plus adjacent pairs: ``rows_scanned`` → rows, scanned, rows_scanned."""
    parts = [
        p for p in re.split(r"[^a-z0-9]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()) if p
    ]
    return parts + ["_".join(parts[i : i + 2]) for i in range(len(parts) - 1)]


def _first_hit(name: str, table: Mapping[str, str]) -> str | None:
    for w in words(name):
        if w in table:
            return table[w]
    return None


def _allowed(table: TableProposal) -> Allowance | None:
    allowance = EVENT_GRAIN_ALLOWED.get(table.name)
    if allowance is None:
        return None
    said = f"{table.name} {table.comment}".lower()
    return allowance if any(w in said for w in allowance.words) else None


def check(table: TableProposal) -> list[Problem]:
    """Every rule ``table`` breaks."""
    problems: list[Problem] = []

    def flag(rule: str, message: str, line: int | None = None) -> None:
        problems.append(Problem(line or table.line, table.name, rule, message))

    allowance = _allowed(table)
    by_name = {c.name.lower(): c for c in table.columns}
    key = table.key
    if table.name in EVENT_GRAIN_ALLOWED and allowance is None:
        reason = EVENT_GRAIN_ALLOWED[table.name]
        flag(
            "event-grain",
            f"allow-listed ({reason.reason}) only if its name or comment says "
            f"so: mention {' or '.join(reason.words)}",
        )

    # grain: one row per event?
    if allowance is None:
        for column, truncated in key:
            col = by_name.get(column.lower())
            if column.lower() in EVENT_ID_COLUMNS or column.lower().endswith("_event_id"):
                flag("event-grain", f"key column {column!r} identifies single events")
            elif col is not None and not truncated and TIMESTAMP_TYPES.match(base_type(col.type)):
                flag(
                    "event-grain",
                    f"key column {column!r} is a raw timestamp ({col.type}); "
                    "aggregate per day/hour/month instead",
                )
        hit = _first_hit(table.name, LOG_NAME_WORDS)
        if hit:
            flag("log-like-name", f"the name says {hit}")

    has_period = any(
        c.name.lower() in PERIOD_NAMES or PERIOD_TYPES.match(base_type(c.type))
        for c in table.columns
    ) or any(truncated for _, truncated in key)
    if not has_period and not key:
        flag(
            "missing-grain",
            "no period column (day, month, ...) and no key (ORDER BY / PRIMARY KEY)",
        )

    for col in table.columns:
        name = col.name
        # most specific first: "max_connections" is configuration before it is telemetry
        for rule, vocabulary, phrases in (
            ("runtime-config", CONFIG_WORDS, {}),
            ("telemetry-column", TELEMETRY_WORDS, TELEMETRY_PHRASES),
            ("ui-column", UI_WORDS, {}),
            ("raw-payload", PAYLOAD_WORDS, {}),
        ):
            hit = _first_hit(name, {**vocabulary, **phrases})
            if hit:
                flag(rule, f"column {name!r} looks like {hit}", col.line)
                break

    undocumented = [c for c in table.columns if not c.comment]
    if undocumented:
        names = ", ".join(c.name for c in undocumented)
        flag("undocumented-column", f"no COMMENT on {names}", undocumented[0].line)

    if allowance is not None and table.ttl:
        flag("compliance-retention", "a TTL would delete compliance records")
    return problems


def lint_sql(sql: str) -> list[Problem]:
    """Every problem of every CREATE TABLE in a script (parse errors included)."""
    tables, errors = parse(sql)
    problems = [Problem(line, "?", "parse-error", message) for line, message in errors]
    for table in tables:
        problems.extend(check(table))
    return sorted(problems, key=lambda p: (p.line, p.table, p.rule))


def lint_file(path: Path) -> list[str]:
    """Formatted problem lines for one file."""
    return [p.format(str(path)) for p in lint_sql(path.read_text(encoding="utf-8"))]
