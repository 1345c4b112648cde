"""The query path's guard: one read statement over the OLAP catalog, or a one-line refusal.

Whatever reaches a query path (the worker's ``POST /sluice/query/``, ``sluice olap query``,
the read requests of ``sluice olap serve``) runs exactly one read statement over the OLAP
catalog's tables and views and a few system tables, enforced twice: by parsers here and
by the engine's read-only mode and limits (:func:`read_settings`). Keyword matching decides
nothing. Pure: no I/O; :mod:`sluice.olap.reader` is the connection that applies it.

API
---
* :func:`check_read` ``(sql, allowed) -> str``: the normalized statement to run, or
  :class:`ReadRefused` whose ``str()`` is one line, ``refused: <what>``.
* :func:`check_engine_ast` ``(ast_json, allowed)``: the same verdict on ClickHouse's own
  parse of that statement (``parseQueryToJSON``, :data:`ENGINE_AST_SQL`; parses, runs
  nothing).
* :func:`read_settings` ``(max_execution_time_s, max_result_rows, max_result_bytes, *,
  max_memory_usage, max_threads) -> dict``: the settings of every read, per query.
* :func:`catalog_relations`: what users may read; :func:`settings_clause` and
  :func:`strip_output_format` for a front that runs raw chDB.

Threat model
------------
The caller is anyone who reaches the endpoint or the CLI. The engine runs inside the
worker's process (chDB) or is the production server; reads must not: write files (``INTO
OUTFILE``, spills), read files (``file()``, a path used as a table name), reach the network
or other servers (``url``, ``s3``, ``remote``, ``mysql``, dictionaries with remote sources:
SSRF from the worker's network position), run processes (``executable``, ``python``),
change data or schema (a second statement, DDL, DML, ``SYSTEM``), lift their own limits
(``SETTINGS``, ``SET``), reveal credentials or other users' queries (``system.users``,
``system.query_log``, ...), or stall the pipeline (a read holding the store while the
checkpoint waits; ``sleep``; an unbounded result; the worker's memory; the parser itself).

The layers, in order
--------------------
1. The text: at most :data:`MAX_SQL_CHARS` characters, :data:`MAX_TOKENS` tokens,
   :data:`MAX_NESTING` bracket levels; no NUL or other control characters, valid UTF-8.
2. Tokens (sqlglot's ClickHouse tokenizer: strings, quoted identifiers, heredocs, ``--``,
   ``#`` and nested ``/* */`` comments are single tokens): one statement (semicolons
   outside literals and comments), no ``INTO OUTFILE`` (sqlglot cannot parse it, so it gets
   its own name here).
3. The tree (``sqlglot.parse(sql, read="clickhouse")``): the root is a SELECT, UNION /
   INTERSECT / EXCEPT or WITH ... SELECT; every node is walked: no DDL/DML/command node;
   only the clauses of :data:`_SELECT_CLAUSES` (so no ``SETTINGS``, ``FORMAT``, ``INTO``, ...
   at any depth); every FROM/JOIN source is a table name or a subquery, never a table
   function (``ARRAY JOIN`` unfolds expressions); every table is in ``allowed``, is
   ``system.<one of READABLE_SYSTEM_TABLES>``, or is a query CTE in scope; no ``x IN
   name``, ``x IN (name)``, ``globalIn(x, name)`` (ClickHouse reads ``name`` as a table,
   also through a ``WITH name AS alias``: measured; sqlglot reads a column); no query
   parameters; no function of the deny list (below).
4. Normalization: the tree is rendered again without comments, re-parsed, and must be a
   fixed point; the re-parsed tree is checked again, and so are the calls in the rendered
   text as a tokenizer sees them (``name(``, quoted or not). What runs is that text.
5. The engine's parser (:class:`~sluice.olap.reader.OlapReader`): ClickHouse parses the
   text (``parseQueryToJSON``, ~4 ms) and :func:`check_engine_ast` walks its AST: where the
   two parsers could read one text two ways, the engine's reading is checked too.
6. The engine: ``readonly=1`` and the limits of :func:`read_settings` on every read, on a
   connection of its own (:mod:`sluice.olap.reader`).

Refused, and why
----------------
* A second statement: chDB runs every statement of a text (``SELECT 1; SELECT 2`` returns
  both), and a client's trailing ``SETTINGS readonly=1`` covers the last one only:
  ``DROP TABLE t; SELECT 1 SETTINGS readonly=1`` dropped ``t`` (chDB 26.9, measured).
* Every table function in FROM/JOIN, harmless ones included (``numbers``, ``zeros``,
  ``generateRandom``, ``merge``, ``view``, ``values``, ``dictionary``, ...): the path reads
  the catalog; the others read files, URLs, object stores, other servers, processes, or
  burn CPU for free.
* Functions: ``file`` (readonly=1 does not refuse the scalar ``file()``: measured, it read
  the file), ``dictGet*``/``dictHas``/``dictIsIn`` (a dictionary's source may be a file, a URL,
  another server or a process), ``joinGet*``, ``hasColumnInTable`` (takes a host),
  ``catboostEvaluate``/``modelEvaluate``/``naiveBayesClassifier*`` (load model files),
  ``sleep``/``sleepEachRow``, ``logTrace`` and ``generateSerialID`` (write to the server log,
  to Keeper), ``addressTo*``/``demangle`` (the process' memory), ``showCertificate``,
  ``getServerSetting``, ``getClientHTTPHeader``, ``__*`` internals, and the names of the
  table functions that reach outside (so a future scalar twin is refused too).
* ``INTO OUTFILE`` (with ``TRUNCATE``/``APPEND``/``COMPRESSION``/``AND STDOUT``): chDB's
  readonly=1 still writes the file (DESIGN §6; measured). A server refuses it itself
  (``INTO_OUTFILE_NOT_ALLOWED``: only clickhouse-client/-local write it; from ClickHouse's
  source, not measured here: no server on this machine).
* ``FORMAT``: the client chooses the output format (a front passes it out of band:
  :func:`strip_output_format`, which knows :data:`OUTPUT_FORMATS` only: ``Template`` and
  ``CapnProto`` read schema files).
* ``SETTINGS`` anywhere: it would lift the limits (readonly=1 refuses it too, measured).
* A table outside the catalog: chDB reads a file for a table name that is a path
  (``SELECT * FROM "/etc/passwd"`` returned the file, also with readonly=1 once the path
  had been read once); ``default.x``/``other.x``; ``information_schema``; a scalar
  ``WITH 1 AS users ... FROM users`` (reads the table ``users``); a CTE out of its scope.
* ``EXPLAIN``: ``EXPLAIN PLAN``/``ESTIMATE`` run scalar subqueries (a ``sleep(2)`` inside
  took 2.0 s) and ``EXPLAIN SYNTAX ... INTO OUTFILE`` wrote the file (measured).
* ``SHOW`` other than ``SHOW TABLES`` / ``SHOW CREATE TABLE t``, ``DESCRIBE`` of anything but
  a readable table: those four are answered by an equivalent SELECT over ``system.tables`` /
  ``system.columns`` (same rows; ``SHOW CREATE`` on one line, ``DESCRIBE`` without
  ``ttl_expression``), so they take the one checked path.
* Query parameters (``{p:String}``, ``?``): the query paths pass none.

Readable system tables
----------------------
:data:`READABLE_SYSTEM_TABLES`: ``one``, ``databases``, ``tables``, ``columns`` (what exists
and its schema; ClickHouse masks secrets in DDL by default), ``parts``, ``merges``,
``mutations``, ``replicas`` (merge and replication health), ``metrics``, ``events``,
``asynchronous_metrics`` (load, memory, disks). Left out: access control (``users``,
``roles``, ``grants``, ``quotas``, ``row_policies``, ``settings_profiles``), configuration
(``settings``, ``server_settings``, ``merge_tree_settings``, ``macros``, ``clusters``,
``disks``), secrets (``named_collections``, ``dictionaries``: sources carry credentials,
``certificates``), other users' query texts (``query_log``, ``processes``, ``text_log``,
``errors``), the network (``zookeeper``), the process (``stack_trace``), and the
generators (``numbers``, ``zeros``: unbounded).

Settings (:func:`read_settings`), measured on chDB 26.9 (chdb 4.4.0, clickhouse-connect 1.12)
-------------------------------------------------------------------------------------------
* ``readonly=1``: refuses DDL/DML/``SET``, ``file()``/``url()``/``remote()`` as table
  functions; does not refuse ``INTO OUTFILE``, scalar ``file()``, a path as a table name
  once read. A trailing ``SETTINGS readonly=1`` applies to the whole statement: subqueries,
  CTEs, ``IN (SELECT ...)``, every UNION branch (measured with ``file()``).
* ``max_execution_time`` + ``timeout_overflow_mode='throw'``: interrupts: ``count()`` over
  ``numbers(1e11)`` stopped at 1.000 s (limit 1), ``sleep(2)`` at 1.005 s, a UNION branch
  or scalar subquery at 1.00 s; a triple cross join of catalog views: 0.52–0.60 s for a
  0.5 s limit, 3.02 s for 3 s. ``'break'`` would return a silent partial result.
* ``max_result_rows``/``max_result_bytes`` + ``result_overflow_mode='throw'``: the final
  result only (``count()`` over a 100,000-row subquery passes a 10-row limit); throws
  ``TOO_MANY_ROWS_OR_BYTES``.
* ``max_memory_usage``: throws (16 MiB: a ``groupArray`` over a cross join stopped in
  0.06 s). chDB runs in the worker's process: without it a read can take its memory.
* ``max_bytes_(ratio_)before_external_group_by/sort = 0``: with the default ratio 0.5 a
  GROUP BY over its memory limit tried to spill; with a byte threshold it spilled to disk
  and succeeded under readonly=1 (6 s): a read would write. Off, it fails on memory.
* ``max_threads=1``: leaves a core to the pipeline (2-core machines).
* ``allow_introspection_functions=0``: chDB's default is 1.
* Not ``allow_ddl=0``: readonly refuses DDL already, and ``SET allow_ddl = DEFAULT`` is
  refused after ``SET allow_ddl = 0`` (measured), like ``SET readonly = DEFAULT`` in
  readonly mode: a front that applies settings with SET and restores them would stay
  without DDL. Settings go per query, never as SET on a shared session: clickhouse-connect's
  chDB backend applies a non-SELECT's per-call settings as ``SET ...`` then ``SET ... =
  DEFAULT``; with ``readonly=1`` the restore fails silently and the handle stays read-only
  (measured: the writer's next INSERT was refused).

chDB findings (the connection design is in :mod:`sluice.olap.reader`)
--------------------------------------------------------------------
* Two handles on one engine (``get_client(interface="chdb", path=P)`` twice, or
  ``chdb.connect(P)`` twice) run queries at once and release the GIL; settings and ``USE``
  are per handle. Inserts of 200 rows every 0.1 s on the writer's client while 1.3–2 s
  reads (a cross join of catalog rows) ran back to back for 5 s on an OlapReader, 4 runs
  on 2 shared cores: 36–51 inserts, p50 12–28 ms, max 75–386 ms (without reads: p50
  9–19 ms, max 11–62 ms). The same reads through the writer's own client (one handle, one
  lock: the worker's endpoint before): 1–4 inserts in 5 s, p50 1.2–2.8 s, max 4.4 s — the
  writer waited for whole reads, and reads back to back starve it.
* A failed query's output stays in its handle's buffer and comes out with the next query:
  after a timed-out ``SELECT 7 UNION ALL <long>``, ``SELECT 42`` on that handle returned
  ``7, 42`` (CSV, TSV, JSONEachRow; two Native blocks, which clickhouse-connect decodes as
  rows or fails on). Other handles are clean; a new handle is clean. The reader drops the
  handle after any failure.

sqlglot (30.x) findings
-----------------------
* It parses ClickHouse's FINAL, PREWHERE, SAMPLE, LIMIT n BY, ARRAY JOIN, WITH TOTALS /
  ROLLUP, window functions, lambdas, ``x::T``, heredocs, backslash escapes; not
  ``LIMIT n BY x LIMIT m`` (one LIMIT with BY only) nor ``INTO OUTFILE`` (a parse error).
* The rendering renames some functions (``concat`` -> ``CONCAT``, ``currentDatabase()`` ->
  ``CURRENT_DATABASE()``, ``if`` -> ``CASE``, ``toStartOfDay(x)`` -> ``dateTrunc('DAY', x)``,
  ``splitByChar`` -> ``splitByString``). Of 74 typical queries run on chDB as written and
  as normalized, 68 gave the same rows (5 with an unaliased column's name spelled
  differently), 2 failed the same way, 2 were the introspection rewrites (same rows,
  formatting aside) and 2 were refused as unparsable (an implicit alias after a WHERE
  condition; an invalid ORDER BY). Alias the columns you read by name.
* It reads ``name('arg')`` in FROM as ``name AS _t0("arg")`` for some names
  (``dictionary``): a table alias with columns is refused as a table function.
* It recurses ~20 frames per bracket level (RecursionError at 50 nested parentheses, caught
  anyway); costs are in the comments of the limits below.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Final

import sqlglot
from sqlglot import exp
from sqlglot.dialects.clickhouse import ClickHouse
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from sluice.olap.catalog import OLAP_TABLES


class ReadRefused(ValueError):
    """A query the read path will not run; ``str()`` is one line naming what was refused."""


# -- limits on the text, checked before sqlglot sees it ----------------------------------
# A check parses twice and renders once, in pure Python, holding the GIL: ~2–6 ms for an
# ordinary query, ~40 µs per token for long flat lists (a 2,000-item IN list: 0.15 s), up
# to ~0.5 s for a 650-branch CASE at the token limit. Larger texts are refused on their
# size before any parsing (1 MB: < 1 ms). sqlglot's parser recurses ~20 frames per bracket
# level (RecursionError from 50 nested parentheses), hence the nesting limit.
MAX_SQL_CHARS: Final = 32_768
MAX_TOKENS: Final = 4_000
MAX_NESTING: Final = 32

# -- what may be read ----------------------------------------------------------------------
# system tables an operator needs to see what the store holds and how it is doing; none
# reveals credentials, settings, other users' query texts or the network (see the module
# docstring for what is left out and why).
READABLE_SYSTEM_TABLES: Final = frozenset(
    {
        "one",  # SELECT 1 FROM system.one
        "databases",
        "tables",  # what exists, engines, rows, bytes (secrets in DDL are masked)
        "columns",  # DESCRIBE / schema
        "parts",  # active parts, rows, bytes per partition: merge health
        "merges",  # merges running now
        "mutations",  # ALTER ... DELETE/UPDATE progress
        "replicas",  # replication health on a server (queue sizes, delays)
        "metrics",  # gauges: connections, queries, merges in flight
        "events",  # cumulative counters
        "asynchronous_metrics",  # memory, disk, uptime
    }
)

# Functions refused anywhere in the query, lower-cased (ClickHouse spells some several
# ways), and name prefixes. Every table function is refused in FROM/JOIN by position; the
# names below are the ones that would reach outside as *scalar* calls, plus the table
# functions that reach outside, so a future scalar twin is refused too.
_DENIED_CALLS: Final = frozenset(
    {
        # read a file on the worker's host: chDB's readonly=1 does NOT refuse file() as
        # a scalar (measured: SELECT file('/etc/hostname') SETTINGS readonly=1 reads it)
        "file",
        # another server: hasColumnInTable(['host', ['user', ['password']]], db, t, c)
        "hascolumnintable",
        # Join-engine and model tables outside the catalog; models load files
        "joinget",
        "joingetornull",
        "catboostevaluate",
        "modelevaluate",
        "naivebayesclassifier",
        "naivebayesclassifierwithprob",
        "naivebayesclassifierwithallprobs",
        # stall the reader (max_execution_time also interrupts them, measured)
        "sleep",
        "sleepeachrow",
        # write somewhere: the server log, Keeper
        "logtrace",
        "generateserialid",
        # the process' memory and binary (also off by allow_introspection_functions=0)
        "addresstoline",
        "addresstolinewithinlines",
        "addresstosymbol",
        "demangle",
        # server secrets and configuration, the HTTP request's own headers
        "showcertificate",
        "getserversetting",
        "getclienthttpheader",
        # table functions that reach files, URLs, object stores, other servers or processes
        "url",
        "urlcluster",
        "s3",
        "s3cluster",
        "gcs",
        "oss",
        "cosn",
        "hdfs",
        "hdfscluster",
        "filecluster",
        "filesystem",
        "remote",
        "remotesecure",
        "cluster",
        "clusterallreplicas",
        "mysql",
        "postgresql",
        "mongodb",
        "redis",
        "sqlite",
        "jdbc",
        "odbc",
        "executable",
        "python",
        "eval",
        "input",
        "azureblobstorage",
        "azureblobstoragecluster",
        "arrowflight",
        "ytsaurus",
        "bigquery",
    }
)
_DENIED_PREFIXES: Final = (
    "dict",  # dictGet*, dictHas, dictIsIn...: a dictionary's source may be a file, URL, server
    "__",  # ClickHouse's internal functions
)

# Output formats a transport may ask for (HTTP fronts); the SQL itself never names one.
OUTPUT_FORMATS: Final = frozenset(
    {
        "Native",
        "TabSeparated",
        "TabSeparatedWithNames",
        "TabSeparatedWithNamesAndTypes",
        "TSV",
        "TSVWithNames",
        "TSVWithNamesAndTypes",
        "CSV",
        "CSVWithNames",
        "JSON",
        "JSONCompact",
        "JSONEachRow",
        "JSONCompactEachRow",
        "RowBinary",
        "RowBinaryWithNames",
        "RowBinaryWithNamesAndTypes",
        "Pretty",
        "PrettyCompact",
        "Vertical",
        "Values",
        "Arrow",
        "ArrowStream",
        "Parquet",
    }
)

# Clauses of a SELECT / UNION node that may be set; any other is refused by name.
_SELECT_CLAUSES: Final = frozenset(
    {
        "with_",
        "expressions",
        "distinct",
        "from_",
        "joins",
        "prewhere",
        "where",
        "group",
        "having",
        "qualify",
        "windows",
        "order",
        "limit",
        "offset",
        "sample",
        # UNION / INTERSECT / EXCEPT
        "this",
        "expression",
        "by_name",
        "side",
        "kind",
    }
)
_CLAUSE_NAMES: Final = {
    "settings": "SETTINGS clause",
    "format": "FORMAT clause (the client chooses the output format)",
    "into": "SELECT ... INTO",
    "locks": "FOR UPDATE / FOR SHARE",
    "laterals": "LATERAL",
    "pivots": "PIVOT",
    "connect": "CONNECT BY",
    "match": "MATCH_RECOGNIZE",
    "hint": "query hints",
}
_DDL_DML: Final = (
    exp.DDL,
    exp.DML,
    exp.Command,
    exp.Set,
    exp.Use,
    exp.Kill,
    exp.Drop,
    exp.Alter,
    exp.TruncateTable,
    exp.Grant,
    exp.Revoke,
    exp.Describe,
    exp.Show,
    exp.Attach,
    exp.Detach,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
    exp.Pragma,
    exp.Cache,
    exp.Uncache,
    exp.Refresh,
    exp.LoadData,
    exp.Analyze,
    exp.Comment,
    exp.Declare,
    exp.Execute,
    exp.Export,
    exp.Summarize,
    exp.Check,
)

_DIALECT: Final = ClickHouse()
_TOKENIZER: Final = ClickHouse.tokenizer_class
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_OPEN = (TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.L_BRACE)
_CLOSE = (TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.R_BRACE)
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KINDS = frozenset({"TABLE", "VIEW", "DICTIONARY"})


def catalog_relations() -> frozenset[str]:
    """What users may read: the OLAP catalog's tables, their ``_v`` views (``FINAL`` for
    you) and Sluice's migration history; names in the store's current database."""
    return frozenset(
        {*OLAP_TABLES, *(f"{name}_v" for name in OLAP_TABLES), "sluice_schema_migrations"},
    )


def check_read(sql: str, allowed: Collection[str]) -> str:
    """The one read statement to run for ``sql``, re-rendered from its checked syntax tree.

    ``allowed`` names the relations users may read in the current database (usually
    :func:`catalog_relations`); the :data:`READABLE_SYSTEM_TABLES` are added here. Run the
    returned text, never ``sql``: what runs is what was checked (comments dropped,
    literals re-quoted), and it is a fixed point of parse-and-render. ``SHOW TABLES``,
    ``SHOW CREATE TABLE t``, ``DESCRIBE t`` and ``EXISTS t`` come back as the equivalent
    ``SELECT`` over ``system.tables`` / ``system.columns``.

    Raises :class:`ReadRefused` (one line: ``refused: <what>``) for anything else.
    """
    names = frozenset(allowed)
    text = _check_text(sql)
    tokens = _tokens(text)
    _check_tokens(tokens)
    introspection = _introspection(tokens, names)
    if introspection is not None:
        text, tokens = introspection, _tokens(introspection)
    tree = _parse_one(text, tokens)
    _check_tree(tree, names)
    try:
        out = tree.sql(dialect="clickhouse", comments=False)
        out_tokens = _tokens(out)
        again = _parse_one(out, out_tokens)
        if again.sql(dialect="clickhouse", comments=False) != out:
            raise ReadRefused("refused: the query does not survive normalization; simplify it")
    except RecursionError:
        raise ReadRefused(f"refused: nested deeper than {MAX_NESTING} levels") from None
    _check_tree(again, names)  # the tree of the very text that runs
    _check_calls(out_tokens)  # and the calls as the engine's tokenizer will see them
    return out


def read_settings(
    max_execution_time_s: float = 10.0,
    max_result_rows: int = 100_000,
    max_result_bytes: int = 64 * 2**20,
    *,
    max_memory_usage: int = 1 * 2**30,
    max_threads: int = 1,
) -> dict[str, int | float | str]:
    """The ClickHouse settings every read runs with (see the module docstring: measured).

    Pass them per query (clickhouse-connect: ``query(sql, settings=...)``, which chDB gets
    as a trailing ``SETTINGS`` clause and a server as URL parameters); never ``SET`` them
    on a shared session.
    """
    if max_execution_time_s <= 0 or max_result_rows <= 0 or max_result_bytes <= 0:
        raise ValueError("every read limit must be positive (0 means unlimited to ClickHouse)")
    if max_memory_usage <= 0 or max_threads <= 0:
        raise ValueError("max_memory_usage and max_threads must be positive")
    seconds = int(max_execution_time_s)
    return {
        # refuses DDL, DML, SET, and table functions such as file()/url()/remote() (not
        # INTO OUTFILE nor scalar file(): the parser refuses those)
        "readonly": 1,
        "max_execution_time": seconds if seconds == max_execution_time_s else max_execution_time_s,
        "timeout_overflow_mode": "throw",  # 'break' would return a silent partial result
        "max_result_rows": max_result_rows,
        "max_result_bytes": max_result_bytes,
        "result_overflow_mode": "throw",
        # chDB runs in the worker's process: a read must not be able to take its memory
        "max_memory_usage": max_memory_usage,
        # leave the other cores to the pipeline
        "max_threads": max_threads,
        # no spilling to disk: a read writes nothing, it fails on max_memory_usage instead
        "max_bytes_before_external_group_by": 0,
        "max_bytes_ratio_before_external_group_by": 0,
        "max_bytes_before_external_sort": 0,
        "max_bytes_ratio_before_external_sort": 0,
        # chDB's default is 1
        "allow_introspection_functions": 0,
        # not allow_ddl=0: readonly=1 refuses DDL already, and allow_ddl=0 cannot be undone
        # by `SET allow_ddl = DEFAULT` (measured), so a front that applies per-query
        # settings with SET and restores them (sluice olap serve) would stay DDL-less
    }


def settings_clause(settings: Mapping[str, int | float | str]) -> str:
    """``name = value, ...`` for a ``SETTINGS`` clause (a front that runs raw chDB)."""
    parts = []
    for name, value in settings.items():
        if not _SETTING_NAME.fullmatch(name):
            raise ValueError(f"invalid setting name {name!r}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            literal = "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
        else:
            literal = repr(value)
        parts.append(f"{name} = {literal}")
    return ", ".join(parts)


def strip_output_format(sql: str) -> tuple[str, str | None]:
    """Split a trailing ``FORMAT name`` (what clickhouse-connect appends over HTTP) from
    ``sql``: ``(the rest, name)``; ``name`` must be one of :data:`OUTPUT_FORMATS`.

    The rest still goes through :func:`check_read`, which refuses any other FORMAT.
    """
    text = _check_text(sql)
    tokens = [t for t in _tokens(text) if t.token_type != TokenType.SEMICOLON]
    if len(tokens) >= 2 and tokens[-2].text.upper() == "FORMAT":
        name = tokens[-1].text
        if name not in OUTPUT_FORMATS:
            raise ReadRefused(f"refused: output format {name}")
        return text[: tokens[-2].start], name
    return text, None


# The engine's own parser: ClickHouse's AST of the normalized text, as JSON. Parsing only
# (nothing runs, measured: a scalar sleep(2) inside returns at once); it names the
# statement by parameter, so the text is never spliced into SQL.
ENGINE_AST_SQL: Final = "SELECT parseQueryToJSON({sql:String})"
_READ_QUERIES: Final = frozenset(
    {"SelectWithUnionQuery", "SelectQuery", "SelectIntersectExceptQuery"}
)
_IN_FUNCTIONS: Final = frozenset(
    {
        "in",
        "notin",
        "globalin",
        "globalnotin",
        "nullin",
        "notnullin",
        "globalnullin",
        "globalnotnullin",
    }
)
_ENGINE_CLAUSES: Final = {
    "out_file": "INTO OUTFILE",
    "settings_ast": "SETTINGS clause",
    "format_ast": "FORMAT clause (the client chooses the output format)",
}


def check_engine_ast(ast: str | Mapping[str, Any], allowed: Collection[str]) -> None:
    """The same verdict as :func:`check_read`, on ClickHouse's own parse of the text that
    runs (``ast``: the JSON ``parseQueryToJSON`` returns for it, see
    :data:`ENGINE_AST_SQL`). A second, independent parser: where sqlglot and ClickHouse
    could read one text two ways, the engine's reading is the one checked here.
    """
    tree = json.loads(ast) if isinstance(ast, str) else ast
    if not isinstance(tree, Mapping) or tree.get("type") not in _READ_QUERIES:
        kind = tree.get("type", "?") if isinstance(tree, Mapping) else "?"
        raise ReadRefused(f"refused: not a read statement ({kind})")
    _engine_walk(tree, frozenset(allowed), frozenset())


def _engine_walk(node: Any, allowed: frozenset[str], ctes: frozenset[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _engine_walk(item, allowed, ctes)
        return
    if not isinstance(node, Mapping):
        return
    kind = str(node.get("type", ""))
    if kind.endswith("Query") and kind not in _READ_QUERIES and kind != "TablesInSelectQuery":
        # every statement's AST type ends in Query (SELECT * FROM (EXPLAIN ...) is valid)
        raise ReadRefused(f"refused: not a read statement ({kind})")
    for key, what in _ENGINE_CLAUSES.items():
        if node.get(key) is not None:
            raise ReadRefused(f"refused: {what}")
    if node.get("is_into_outfile_with_stdout"):
        raise ReadRefused("refused: INTO OUTFILE")
    if kind == "QueryParameter":
        raise ReadRefused("refused: query parameter")
    if kind == "SelectQuery" and isinstance(node.get("with"), Mapping):
        names = {
            str(element.get("name"))
            for element in node["with"].get("children", [])
            if isinstance(element, Mapping)
            and element.get("type") == "WithElement"
            and element.get("subquery") is not None
        }
        ctes = ctes | names
    function = node.get("table_function")
    if isinstance(function, Mapping):
        raise ReadRefused(f"refused: table function {function.get('name', '?')}()")
    table = node.get("database_and_table_name")
    if isinstance(table, Mapping):
        _engine_table(table, allowed, ctes)
    if kind == "Function":
        name = str(node.get("name", ""))
        if _denied(name):
            raise ReadRefused(f"refused: function {name}()")
        if name.lower() in _IN_FUNCTIONS:
            arguments = node.get("arguments", {}).get("children", [])
            right = arguments[1] if len(arguments) > 1 else {}
            # a function there is a scalar call; a name is a table
            if right.get("type") in ("Identifier", "TableIdentifier"):
                raise ReadRefused("refused: IN <table>; write IN (SELECT ...)")
    for value in node.values():
        if isinstance(value, Mapping | list):
            _engine_walk(value, allowed, ctes)


def _engine_table(table: Mapping[str, Any], allowed: frozenset[str], ctes: frozenset[str]) -> None:
    parts = [str(p) for p in table.get("name_parts") or [table.get("name", "")]]
    if len(parts) == 1 and (parts[0] in allowed or parts[0] in ctes):
        return
    if len(parts) == 2 and parts[0] == "system" and parts[1] in READABLE_SYSTEM_TABLES:
        return
    name = ".".join(parts)
    raise ReadRefused(f"refused: table '{name}' is not readable")


# -- the checks ------------------------------------------------------------------------


def _check_text(sql: object) -> str:
    if not isinstance(sql, str):
        raise ReadRefused("refused: the query is not text")
    if len(sql) > MAX_SQL_CHARS:
        raise ReadRefused(f"refused: query longer than {MAX_SQL_CHARS} characters")
    if "\x00" in sql:
        raise ReadRefused("refused: NUL character in the query")
    control = _CONTROL.search(sql)
    if control:
        raise ReadRefused(f"refused: control character U+{ord(control[0]):04X} in the query")
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError:
        raise ReadRefused("refused: the query is not valid UTF-8") from None
    if not sql.strip():
        raise ReadRefused("refused: empty query")
    return sql


def _tokens(text: str) -> list[Token]:
    try:
        return _DIALECT.tokenize(text)
    except TokenError as exc:
        raise ReadRefused(f"refused: cannot parse: {_one_line(exc)}") from None


def _check_tokens(tokens: list[Token]) -> None:
    """What the token stream alone decides: size, nesting, statements, INTO OUTFILE."""
    if len(tokens) > MAX_TOKENS:
        raise ReadRefused(f"refused: query longer than {MAX_TOKENS} tokens")
    depth = 0
    statements = 0
    in_statement = False
    for i, token in enumerate(tokens):
        kind = token.token_type
        if kind in _OPEN:
            depth += 1
            if depth > MAX_NESTING:
                raise ReadRefused(f"refused: nested deeper than {MAX_NESTING} levels")
        elif kind in _CLOSE:
            depth -= 1
        if kind == TokenType.SEMICOLON:
            in_statement = False
            continue
        if not in_statement:
            statements += 1
            in_statement = True
            if statements > 1:
                raise ReadRefused("refused: more than one statement")
        if (
            token.text.upper() == "INTO"
            and i + 1 < len(tokens)
            and tokens[i + 1].text.upper() == "OUTFILE"
        ):
            raise ReadRefused("refused: INTO OUTFILE")
    if statements == 0:
        raise ReadRefused("refused: empty query")


def _parse_one(text: str, tokens: list[Token]) -> exp.Expr:
    try:
        trees = [t for t in sqlglot.parse(text, read="clickhouse") if t is not None]
    except (ParseError, TokenError) as exc:
        raise ReadRefused(f"refused: cannot parse: {_one_line(exc)}") from None
    except RecursionError:
        raise ReadRefused(f"refused: nested deeper than {MAX_NESTING} levels") from None
    if len(trees) != 1:  # the token check counted one; a parser disagreeing is refused
        raise ReadRefused("refused: more than one statement")
    tree = trees[0]
    if isinstance(tree, _DDL_DML) or not isinstance(tree, exp.Query):
        raise ReadRefused(f"refused: not a read statement ({_head(tokens)})")
    # "(SELECT ...)" on its own: run the SELECT
    while isinstance(tree, exp.Subquery) and set(_set_args(tree)) == {"this"}:
        tree = tree.this
    return tree


def _check_tree(tree: exp.Expr, allowed: frozenset[str]) -> None:
    for node in tree.walk():
        if isinstance(node, _DDL_DML):
            raise ReadRefused(f"refused: not a read statement ({type(node).__name__.upper()})")
        if isinstance(node, exp.Select | exp.SetOperation):
            for clause in _set_args(node):
                if clause not in _SELECT_CLAUSES:
                    what = _CLAUSE_NAMES.get(clause, f"{clause.rstrip('_').upper()} clause")
                    raise ReadRefused(f"refused: {what}")
        if isinstance(node, exp.From | exp.Join):
            _check_source(node)
        elif isinstance(node, exp.Table):
            _check_table(node, allowed)
        elif isinstance(node, exp.Into):
            raise ReadRefused("refused: SELECT ... INTO")
        elif isinstance(node, exp.In) and _in_names_a_table(node):
            raise ReadRefused("refused: IN <table>; write IN (SELECT ...)")
        elif isinstance(node, exp.Placeholder | exp.Parameter | exp.SessionParameter):
            raise ReadRefused(f"refused: query parameter {node.sql(dialect='clickhouse')}")
        elif isinstance(node, exp.Func):
            name = _call_name(node)
            if _denied(name):
                raise ReadRefused(f"refused: function {name}()")
            if name.lower() in _IN_FUNCTIONS and _names_a_table(node.expressions[1:2]):
                raise ReadRefused(f"refused: {name}(x, <table>); write x IN (SELECT ...)")


def _in_names_a_table(node: exp.In) -> bool:
    """ClickHouse reads the right side of ``x IN name``, ``x IN (name)`` and ``x IN
    ((name))`` as a table (measured: ``5 IN (t)`` is true when t holds 5); sqlglot reads a
    column. A function there is a scalar call (``1 IN (numbers(3))``: no such function)."""
    if node.args.get("field") is not None:
        return True
    return len(node.expressions) == 1 and _names_a_table(node.expressions)


def _names_a_table(expressions: list[exp.Expr]) -> bool:
    if not expressions:
        return False
    item = expressions[0]
    while isinstance(item, exp.Paren):
        item = item.this
    return isinstance(item, exp.Column | exp.Dot | exp.Identifier | exp.Table)


def _check_source(node: exp.From | exp.Join) -> None:
    """A FROM / JOIN source is a table name or a subquery: never a table function."""
    source = node.this
    if isinstance(node, exp.Join) and str(node.args.get("kind") or "").upper() == "ARRAY":
        return  # ARRAY JOIN unfolds an array expression of the rows already read
    while isinstance(source, exp.Alias | exp.Final):  # `t FINAL` is Final(Table)
        source = source.this
    if isinstance(source, exp.Table | exp.Subquery):
        return
    raise ReadRefused(f"refused: table function {_source_name(source)}()")


def _check_table(table: exp.Table, allowed: frozenset[str]) -> None:
    if not isinstance(table.this, exp.Identifier):
        raise ReadRefused(f"refused: table function {_source_name(table.this)}()")
    alias = table.args.get("alias")
    if isinstance(alias, exp.TableAlias) and alias.columns:
        # how sqlglot reads `name('arg')` for some names (dictionary('d'), ...)
        raise ReadRefused(f"refused: table function {table.name}()")
    if table.args.get("catalog") is not None:
        raise ReadRefused(f"refused: table '{table.sql(dialect='clickhouse')}' is not readable")
    db = table.args.get("db")
    if db is not None:
        if db.name == "system" and table.name in READABLE_SYSTEM_TABLES:
            return
        raise ReadRefused(f"refused: table '{db.name}.{table.name}' is not readable")
    if table.name in allowed or table.name in _visible_ctes(table):
        return
    raise ReadRefused(f"refused: table '{table.name}' is not readable (not in the OLAP catalog)")


def _visible_ctes(node: exp.Expr) -> set[str]:
    """Names of the query CTEs in scope at ``node``: WITH clauses of its ancestors.

    ClickHouse's ``WITH <expression> AS name`` is a scalar alias, not a table: a FROM of
    that name reads the database's table, so only query CTEs count.
    """
    names: set[str] = set()
    parent = node.parent
    while parent is not None:
        with_ = parent.args.get("with_")
        if isinstance(with_, exp.With):
            for cte in with_.expressions:
                if isinstance(cte, exp.CTE) and isinstance(cte.this, exp.Query):
                    names.add(cte.alias)
        parent = parent.parent
    return names


def _check_calls(tokens: list[Token]) -> None:
    """Every ``name(`` in the text that runs, as ClickHouse will tokenize it."""
    for previous, token in zip(tokens, tokens[1:], strict=False):
        called = token.token_type == TokenType.L_PAREN and previous.token_type != TokenType.STRING
        if called and _denied(previous.text):
            raise ReadRefused(f"refused: function {previous.text}()")


def _introspection(tokens: list[Token], allowed: frozenset[str]) -> str | None:
    """``SHOW TABLES`` / ``SHOW CREATE`` / ``DESCRIBE`` / ``EXISTS`` as a SELECT, or None.

    ClickHouse runs these itself, but sqlglot reads most as an opaque Command and
    clickhouse-connect sends them on its SET-dance path; a SELECT over the readable
    system tables answers the same question on the one checked path.
    """
    words = [t for t in tokens if t.token_type != TokenType.SEMICOLON]
    if len(words) == 2 and words[0].token_type in _TOKENIZER.COMMANDS:
        # sqlglot's tokenizer keeps the rest of a SHOW as one string: split it again
        words = [words[0], *_tokens(words[1].text)]
    head = [t.text.upper() for t in words[:3]]
    if not head or head[0] not in {"SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN"}:
        return None
    if head[0] == "EXPLAIN":
        raise ReadRefused("refused: EXPLAIN (it runs scalar subqueries and INTO OUTFILE)")
    rest = words[1:]
    if head[:2] == ["SHOW", "TABLES"] and len(words) == 2:
        return "SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name"
    if head[0] == "SHOW" and len(head) > 1 and head[1] == "CREATE":
        rest = words[2:]
    elif head[0] == "SHOW":
        raise ReadRefused("refused: SHOW (only SHOW TABLES; read system.tables)")
    if rest and rest[0].token_type != TokenType.IDENTIFIER and rest[0].text.upper() in _KINDS:
        rest = rest[1:]
    db, name = _relation_name(rest)
    if name is None:
        raise ReadRefused(f"refused: {head[0]} takes one table name here")
    if db is None and name not in allowed and head[0] != "EXISTS":
        raise ReadRefused(f"refused: table '{name}' is not readable (not in the OLAP catalog)")
    if db is not None and (db != "system" or name not in READABLE_SYSTEM_TABLES):
        raise ReadRefused(f"refused: table '{db}.{name}' is not readable")
    database = "currentDatabase()" if db is None else _string("system")
    if head[0] == "EXISTS":
        return (
            "SELECT toUInt8(count() > 0) AS result FROM system.tables "
            f"WHERE database = {database} AND name = {_string(name)}"
        )
    if head[0] == "SHOW":
        return (
            "SELECT create_table_query AS statement FROM system.tables "
            f"WHERE database = {database} AND name = {_string(name)}"
        )
    return (
        "SELECT name, type, default_kind AS default_type, default_expression, comment, "
        "compression_codec AS codec_expression FROM system.columns "
        f"WHERE database = {database} AND table = {_string(name)} ORDER BY position"
    )


def _relation_name(tokens: list[Token]) -> tuple[str | None, str | None]:
    names = (TokenType.VAR, TokenType.IDENTIFIER)
    if len(tokens) == 1 and (tokens[0].token_type in names or tokens[0].text.isidentifier()):
        return None, tokens[0].text
    if len(tokens) == 3 and tokens[1].token_type == TokenType.DOT:
        return tokens[0].text, tokens[2].text
    return None, None


# -- helpers -----------------------------------------------------------------------------


def _set_args(node: exp.Expr) -> Iterable[str]:
    return (k for k, v in node.args.items() if v not in (None, False, [], ""))


def _call_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name)
    return node.sql_names()[0].lower() if node.sql_names() else type(node).__name__


def _source_name(node: exp.Expr | None) -> str:
    if isinstance(node, exp.Func):
        return _call_name(node)
    if node is None:
        return "?"
    return type(node).__name__.lower()


def _denied(name: str) -> bool:
    lowered = name.lower()
    return lowered in _DENIED_CALLS or lowered.startswith(_DENIED_PREFIXES)


def _head(tokens: list[Token]) -> str:
    words = [t.text.upper() for t in tokens if t.token_type != TokenType.SEMICOLON]
    return words[0] if words else "?"


def _string(value: str) -> str:
    return exp.Literal.string(value).sql(dialect="clickhouse")


def _one_line(exc: Exception) -> str:
    return _ANSI.sub("", str(exc)).strip().splitlines()[0][:200] if str(exc) else "?"
