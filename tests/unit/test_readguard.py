"""The read path's guard (sluice/olap/readguard.py): hostile inputs, one test per class.

Pure: no engine. tests/unit/test_olap_reader.py runs the same inputs against chDB.
"""

from __future__ import annotations

import pytest

from sluice.olap.audit import CONFLICTS_SQL, VERIFY_SQL, where_tenant
from sluice.olap.catalog import OLAP_TABLES
from sluice.olap.readguard import (
    MAX_NESTING,
    MAX_SQL_CHARS,
    OUTPUT_FORMATS,
    READABLE_SYSTEM_TABLES,
    ReadRefused,
    catalog_relations,
    check_read,
    read_settings,
    settings_clause,
    strip_output_format,
)

ALLOWED = catalog_relations()


def refused(sql: str) -> str:
    with pytest.raises(ReadRefused) as info:
        check_read(sql, ALLOWED)
    message = str(info.value)
    assert message.startswith("refused"), message
    assert "\n" not in message, "a refusal is one line"
    return message


# ------------------------------------------------------------------ a second statement


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1; DROP TABLE campaign_analytics",
        "SELECT 1;DROP TABLE campaign_analytics;",
        "SELECT 1; SELECT 2",
        "SELECT 1;;SELECT 2",
        "; SELECT 1; DROP TABLE campaign_analytics",
        "SELECT 1\n;\nINSERT INTO campaign_analytics SELECT * FROM campaign_analytics",
        "SELECT 1; SHOW TABLES; DROP TABLE campaign_analytics",
        "SELECT 1; SYSTEM SHUTDOWN",
        "SELECT * FROM campaign_analytics; TRUNCATE TABLE campaign_analytics",
    ],
)
def test_a_second_statement_is_refused(sql: str) -> None:
    assert refused(sql) == "refused: more than one statement"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 /* ; */ ; DROP TABLE campaign_analytics",
        "SELECT 1 -- harmless\n; DROP TABLE campaign_analytics",
        "SELECT 1 # harmless\n; DROP TABLE campaign_analytics",
        "SELECT '\\\\'; DROP TABLE campaign_analytics",  # the string is one backslash
        "SELECT 'a''b'; DROP TABLE campaign_analytics",
        "SELECT `x;y`; DROP TABLE campaign_analytics",
    ],
)
def test_a_second_statement_after_comments_or_strings_is_refused(sql: str) -> None:
    assert refused(sql) == "refused: more than one statement"


@pytest.mark.parametrize(
    ("sql", "runs"),
    [
        # what hides in comments and literals stays there: the comments are not rendered
        ("SELECT 1 -- ; DROP TABLE campaign_analytics", "SELECT 1"),
        ("SELECT 1 /* ; DROP TABLE campaign_analytics */", "SELECT 1"),
        ("SELECT 1 -- */ INTO OUTFILE '/tmp/x'\n", "SELECT 1"),
        ("SELECT 1 /* /* nested */ ; DROP TABLE campaign_analytics */", "SELECT 1"),
        ("SELECT 1 # ; DROP TABLE campaign_analytics\n", "SELECT 1"),
        ("SELECT 'a; DROP TABLE campaign_analytics'", "SELECT 'a; DROP TABLE campaign_analytics'"),
        # ClickHouse reads \' as a quote inside the literal: one statement, one string
        ("SELECT 'a\\'; DROP TABLE x; --'", "SELECT 'a''; DROP TABLE x; --'"),
        ("SELECT $$; DROP TABLE x$$", "SELECT '; DROP TABLE x'"),
        ("SELECT 1 AS `a;DROP TABLE x`", 'SELECT 1 AS "a;DROP TABLE x"'),
        ("SELECT 'x' /* ' ; DROP TABLE campaign_analytics ' */", "SELECT 'x'"),
    ],
)
def test_semicolons_in_comments_and_literals_do_not_make_statements(sql: str, runs: str) -> None:
    assert check_read(sql, ALLOWED) == runs


def test_a_semicolon_inside_a_quoted_table_name_is_a_name_not_a_statement() -> None:
    message = refused('SELECT * FROM "campaign_analytics; DROP TABLE campaign_analytics"')
    assert message.startswith("refused: table 'campaign_analytics; DROP TABLE")


# ------------------------------------------------------------------ table functions

TABLE_FUNCTIONS = [
    ("file('/etc/passwd', 'CSV')", "file"),
    ("file('/etc/passwd')", "file"),
    ("url('http://127.0.0.1:28999/', CSV, 'a String')", "url"),
    ("s3('http://127.0.0.1:28999/b/k.csv')", "s3"),
    ("s3Cluster('c', 'http://127.0.0.1:28999/b/k.csv')", "s3Cluster"),
    ("urlCluster('c', 'http://127.0.0.1:28999/')", "urlCluster"),
    ("remote('127.0.0.1:28999', system.one)", "remote"),
    ("remoteSecure('127.0.0.1:28999', 'default', 'campaign_analytics')", "remoteSecure"),
    ("cluster('default', system.one)", "cluster"),
    ("clusterAllReplicas('default', default, campaign_analytics)", "clusterAllReplicas"),
    ("mysql('127.0.0.1:28999', 'db', 't', 'u', 'p')", "mysql"),
    ("postgresql('127.0.0.1:28999', 'db', 't', 'u', 'p')", "postgresql"),
    ("mongodb('127.0.0.1:28999', 'db', 'c', 'u', 'p', 'x String')", "mongodb"),
    ("redis('127.0.0.1:28999', 'k', 'k String')", "redis"),
    ("sqlite('/tmp/x.db', 't')", "sqlite"),
    ("jdbc('jdbc:mysql://127.0.0.1:28999/', 'db', 't')", "jdbc"),
    ("odbc('DSN=x', 'db', 't')", "odbc"),
    ("hdfs('hdfs://127.0.0.1:28999/x', 'CSV')", "hdfs"),
    ("input('a String')", "input"),
    ("executable('x.sh', TSV, 'a String')", "executable"),
    ("python('x')", "python"),
    ("fileCluster('c', '/etc/passwd')", "fileCluster"),
    ("iceberg('http://127.0.0.1:28999/x')", "iceberg"),
    ("deltaLake('http://127.0.0.1:28999/x')", "deltaLake"),
    ("hudi('http://127.0.0.1:28999/x')", "hudi"),
    ("azureBlobStorage('http://127.0.0.1:28999/x')", "azureBlobStorage"),
    ("gcs('http://127.0.0.1:28999/x')", "gcs"),
    # generators and views of other tables: harmless alone, refused all the same (the
    # catalog is the only thing the path reads; numbers(1e12) is a free CPU burner)
    ("numbers(10)", "numbers"),
    ("numbers(0, 10)", "numbers"),
    ("numbers_mt(10)", "numbers_mt"),
    ("zeros(10)", "zeros"),
    ("zeros_mt(10)", "zeros_mt"),
    ("generateRandom('a Int8')", "generateRandom"),
    ("generate_series(1, 10)", "generate_series"),
    ("primes(10)", "primes"),
    ("merge(currentDatabase(), '.*')", "merge"),
    ("merge('system', '^users$')", "merge"),
    ("dictionary('d')", "dictionary"),
    ("view(SELECT * FROM campaign_analytics)", "view"),
    ("values('a UInt8', 1, 2)", "values"),
    ("null('a UInt8')", "null"),
    ("format(JSONEachRow, '{\"a\": 1}')", "format"),
    ("loop(numbers(3))", "loop"),
    ("mergeTreeIndex(currentDatabase(), campaign_analytics)", "mergeTreeIndex"),
    ("fuzzJSON('x')", "fuzzJSON"),
    # spellings
    ("`file`('/etc/passwd')", "file"),
    ("\"file\"('/etc/passwd')", "file"),
    ("FILE('/etc/passwd')", "FILE"),
    ("default.file('/etc/passwd')", "file"),
]


@pytest.mark.parametrize(("source", "name"), TABLE_FUNCTIONS)
def test_every_table_function_is_refused(source: str, name: str) -> None:
    message = refused(f"SELECT * FROM {source}")
    assert message.lower() == f"refused: table function {name.lower()}()", message


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM (SELECT * FROM file('/etc/passwd'))",
        "SELECT * FROM campaign_analytics WHERE campaign_id IN (SELECT * FROM file('/x'))",
        "SELECT * FROM campaign_analytics WHERE EXISTS (SELECT 1 FROM url('http://x', CSV))",
        "WITH x AS (SELECT * FROM file('/etc/passwd')) SELECT * FROM campaign_analytics",
        "WITH x AS (SELECT * FROM remote('127.0.0.1:28999', system.one)) SELECT * FROM x",
        "SELECT * FROM campaign_analytics AS c JOIN file('/etc/passwd') AS f ON 1 = 1",
        "SELECT * FROM campaign_analytics AS c LEFT JOIN (SELECT * FROM s3('x')) AS f ON 1",
        "SELECT * FROM campaign_analytics, numbers(10)",
        "SELECT 1 UNION ALL SELECT * FROM zeros(1)",
        "SELECT (SELECT count() FROM numbers(1000000000000))",
        "SELECT * FROM campaign_analytics_v WHERE sent > (SELECT max(number) FROM numbers(3))",
        "SELECT * FROM (SELECT * FROM (SELECT * FROM (SELECT * FROM url('http://x'))))",
        "SELECT * FROM campaign_analytics FINAL JOIN file('x') FINAL ON 1",
    ],
)
def test_table_functions_are_refused_at_any_depth(sql: str) -> None:
    assert refused(sql).startswith("refused: table function ")


# ------------------------------------------------------------------ INTO OUTFILE, FORMAT, SETTINGS


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM campaign_analytics INTO OUTFILE '/tmp/sluice-x'",
        "SELECT * FROM campaign_analytics INTO OUTFILE '/tmp/sluice-x' TRUNCATE",
        "SELECT * FROM campaign_analytics INTO OUTFILE '/tmp/sluice-x' APPEND",
        "SELECT * FROM campaign_analytics INTO OUTFILE '/tmp/x.gz' COMPRESSION 'gzip' LEVEL 3",
        "SELECT * FROM campaign_analytics INTO OUTFILE '/tmp/sluice-x' AND STDOUT",
        "SELECT * FROM campaign_analytics INTO OUTFILE '/tmp/sluice-x' FORMAT CSV",
        "SELECT 1 into outfile '/tmp/sluice-x'",
        "SELECT 1 INTO /* hidden */ OUTFILE '/tmp/sluice-x'",
        "SELECT 1 INTO\n-- hidden\nOUTFILE '/tmp/sluice-x'",
        "SELECT 1 UNION ALL SELECT 2 INTO OUTFILE '/tmp/sluice-x'",
        "WITH x AS (SELECT 1) SELECT * FROM x INTO OUTFILE '/tmp/sluice-x'",
    ],
)
def test_into_outfile_is_refused(sql: str) -> None:
    assert refused(sql) == "refused: INTO OUTFILE"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM campaign_analytics FORMAT JSON",
        "SELECT * FROM campaign_analytics FORMAT TabSeparated;",
        "SELECT 1 UNION ALL SELECT 2 FORMAT CSV",
        "SELECT * FROM campaign_analytics LIMIT 1 FORMAT Template",
    ],
)
def test_a_format_clause_is_refused(sql: str) -> None:
    assert refused(sql).startswith("refused: FORMAT clause")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM campaign_analytics SETTINGS max_execution_time = 0",
        "SELECT * FROM campaign_analytics SETTINGS readonly = 0",
        "SELECT * FROM campaign_analytics SETTINGS max_result_rows = 0, max_memory_usage = 0",
        "SELECT * FROM (SELECT * FROM campaign_analytics SETTINGS max_threads = 64)",
        "WITH x AS (SELECT 1 SETTINGS max_execution_time = 0) SELECT * FROM x",
        "SELECT 1 UNION ALL SELECT 2 SETTINGS max_execution_time = 0",
        "SELECT count() FROM campaign_analytics WHERE sent IN "
        "(SELECT sent FROM campaign_analytics SETTINGS max_execution_time = 0)",
        "SELECT * FROM campaign_analytics LIMIT 1 SETTINGS allow_introspection_functions = 1",
    ],
)
def test_a_settings_clause_is_refused_wherever_it_is(sql: str) -> None:
    assert refused(sql) == "refused: SETTINGS clause"


# ------------------------------------------------------------------ what may be read


@pytest.mark.parametrize(
    "table",
    [
        "users",
        "roles",
        "grants",
        "role_grants",
        "quotas",
        "row_policies",
        "settings_profiles",
        "settings",
        "server_settings",
        "merge_tree_settings",
        "named_collections",
        "dictionaries",
        "query_log",
        "query_thread_log",
        "processes",
        "text_log",
        "zookeeper",
        "clusters",
        "macros",
        "certificates",
        "stack_trace",
        "numbers",
        "numbers_mt",
        "zeros",
        "functions",
        "disks",
    ],
)
def test_system_tables_outside_the_allow_list_are_refused(table: str) -> None:
    assert table not in READABLE_SYSTEM_TABLES
    message = refused(f"SELECT * FROM system.{table}")
    assert message == f"refused: table 'system.{table}' is not readable"


@pytest.mark.parametrize("table", sorted(READABLE_SYSTEM_TABLES))
def test_the_allow_listed_system_tables_are_readable(table: str) -> None:
    assert check_read(f"SELECT * FROM system.{table}", ALLOWED) == f"SELECT * FROM system.{table}"


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        (
            "SELECT * FROM emails",
            "refused: table 'emails' is not readable (not in the OLAP catalog)",
        ),
        ("SELECT * FROM default.campaign_analytics", "default.campaign_analytics"),
        ("SELECT * FROM other.campaign_analytics", "other.campaign_analytics"),
        ("SELECT * FROM a.b.campaign_analytics", "a.b.campaign_analytics"),
        ("SELECT * FROM information_schema.tables", "information_schema.tables"),
        ("SELECT * FROM INFORMATION_SCHEMA.TABLES", "INFORMATION_SCHEMA.TABLES"),
        # chDB reads a file for a table name that is a path (measured, even with readonly=1
        # on an in-memory engine)
        ('SELECT * FROM "/etc/passwd"', "'/etc/passwd'"),
        ("SELECT * FROM '/etc/passwd'", "'/etc/passwd'"),
        ("SELECT * FROM `campaign_analytics.csv`", "'campaign_analytics.csv'"),
        # ClickHouse's WITH <expression> AS name is a scalar, not a table: FROM users reads
        # the database's table `users`
        ("WITH 1 AS users SELECT * FROM users", "'users'"),
        # a CTE is visible in its own query only
        (
            "SELECT * FROM (WITH x AS (SELECT 1) SELECT * FROM x) AS a JOIN x AS b ON 1",
            "'x'",
        ),
        # case matters to ClickHouse
        ("SELECT * FROM Campaign_Analytics", "'Campaign_Analytics'"),
        ("SELECT * FROM system.Users", "'system.Users'"),
    ],
)
def test_tables_outside_the_catalog_are_refused(sql: str, message: str) -> None:
    got = refused(sql)
    assert message in got and "not readable" in got, got


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 WHERE 1 IN campaign_analytics",
        "SELECT 1 WHERE 1 IN system.users",
        "SELECT 1 WHERE 1 NOT IN emails",
        "SELECT 1 WHERE 1 GLOBAL IN emails",
        "SELECT 1 WHERE 1 IN numbers(10)",
        "SELECT 1 WHERE 1 IN file('/etc/passwd')",
        # in parentheses too (measured: `5 IN (t)` is true when the table t holds 5)
        "SELECT 1 WHERE 1 IN (emails)",
        "SELECT 1 WHERE 1 IN ((system.users))",
        "SELECT 1 WHERE 1 IN (`emails`)",
        "WITH emails AS x SELECT 1 WHERE 1 IN (x)",
        "SELECT globalIn(1, emails)",
        "SELECT notIn(1, (system.users))",
        "SELECT nullIn(1, emails)",
    ],
)
def test_in_a_bare_table_is_refused(sql: str) -> None:
    # ClickHouse reads `x IN name` as a table (sqlglot as a column)
    message = refused(sql)
    assert message.startswith("refused: ") and "<table>" in message, message


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 IN (1)",
        "SELECT 1 IN (1, 2)",
        "SELECT 1 IN (abs(-1))",  # a scalar call (numbers(3) there is "no such function")
        "SELECT 2 IN (1 + 1)",
        "SELECT (1, 2) IN ((1, 2), (3, 4))",
        "SELECT 1 IN [1, 2]",
        "SELECT sent IN (SELECT sent FROM campaign_analytics_v) FROM campaign_analytics_v",
        "SELECT sent IN (sent, 1) FROM campaign_analytics_v",  # a tuple, not a table
    ],
)
def test_in_a_list_or_a_subquery_passes(sql: str) -> None:
    check_read(sql, ALLOWED)


# ------------------------------------------------------------------ statements


@pytest.mark.parametrize(
    ("sql", "head"),
    [
        ("DROP TABLE campaign_analytics", "DROP"),
        ("DROP TABLE campaign_analytics SYNC", "DROP"),
        ("TRUNCATE TABLE campaign_analytics", "TRUNCATE"),
        ("INSERT INTO campaign_analytics SELECT * FROM campaign_analytics", "INSERT"),
        ("INSERT INTO FUNCTION file('/tmp/x') SELECT 1", "INSERT"),
        ("ALTER TABLE campaign_analytics DELETE WHERE 1", "ALTER"),
        ("ALTER TABLE campaign_analytics DROP PARTITION 202601", "ALTER"),
        ("CREATE TABLE x (a UInt8) ENGINE = Memory", "CREATE"),
        ("CREATE TABLE x ENGINE = File(CSV, '/tmp/x') AS SELECT 1", "CREATE"),
        ("CREATE FUNCTION f AS () -> 1", "CREATE"),
        ("DELETE FROM campaign_analytics WHERE 1", "DELETE"),
        ("UPDATE campaign_analytics SET sent = 0 WHERE 1", "UPDATE"),
        ("SYSTEM SHUTDOWN", "SYSTEM"),
        ("SYSTEM DROP DNS CACHE", "SYSTEM"),
        ("KILL QUERY WHERE 1 = 1", "KILL"),
        ("SET max_execution_time = 0", "SET"),
        ("SET readonly = 0", "SET"),
        ("USE system", "USE"),
        ("OPTIMIZE TABLE campaign_analytics FINAL", "OPTIMIZE"),
        ("ATTACH TABLE x", "ATTACH"),
        ("DETACH TABLE campaign_analytics", "DETACH"),
        ("RENAME TABLE campaign_analytics TO x", "RENAME"),
        ("EXCHANGE TABLES campaign_analytics AND mailbox_analytics", "EXCHANGE"),
        ("GRANT ALL ON *.* TO default", "GRANT"),
        ("REVOKE SELECT ON *.* FROM default", "REVOKE"),
        ("BACKUP TABLE campaign_analytics TO File('/tmp/x')", "BACKUP"),
        ("RESTORE TABLE campaign_analytics FROM File('/tmp/x')", "RESTORE"),
        ("CHECK TABLE campaign_analytics", "CHECK"),
        ("WATCH campaign_analytics_v", "WATCH"),
        ("BEGIN TRANSACTION", "BEGIN"),
        ("VALUES (1), (2)", "VALUES"),
    ],
)
def test_anything_but_a_read_is_refused(sql: str, head: str) -> None:
    message = refused(sql)
    assert message.startswith(("refused: not a read statement", "refused: cannot parse")), message
    if message.startswith("refused: not a read statement"):
        assert message == f"refused: not a read statement ({head})"


@pytest.mark.parametrize(
    "sql",
    [
        "EXPLAIN SELECT 1",
        "EXPLAIN PLAN SELECT (SELECT sleep(2))",
        "EXPLAIN SYNTAX SELECT 1 INTO OUTFILE '/tmp/sluice-x'",
        "EXPLAIN PIPELINE SELECT * FROM url('http://127.0.0.1:28999/', CSV)",
        "EXPLAIN ESTIMATE SELECT * FROM campaign_analytics",
        "explain ast select 1",
    ],
)
def test_explain_is_refused(sql: str) -> None:
    # measured on chDB 26.9: EXPLAIN PLAN/ESTIMATE run scalar subqueries (a sleep(2) took
    # 2 s) and EXPLAIN SYNTAX ... INTO OUTFILE wrote the file
    assert refused(sql).startswith("refused: EXPLAIN")


@pytest.mark.parametrize(
    "sql",
    [
        "SHOW GRANTS",
        "SHOW USERS",
        "SHOW SETTINGS LIKE '%'",
        "SHOW PROCESSLIST",
        "SHOW DATABASES",
        "SHOW TABLES FROM system",
        "SHOW CREATE USER default",
        "DESCRIBE file('/etc/passwd')",
        "DESCRIBE TABLE system.users",
        "DESCRIBE emails",
        "DESCRIBE (SELECT * FROM file('/etc/passwd'))",
        "EXISTS TABLE a b",
    ],
)
def test_other_introspection_is_refused(sql: str) -> None:
    refused(sql)


# ------------------------------------------------------------------ functions


@pytest.mark.parametrize(
    ("sql", "name"),
    [
        ("SELECT sleep(3)", "sleep"),
        ("SELECT SLEEP(3)", "SLEEP"),
        ("SELECT sleepEachRow(1) FROM campaign_analytics", "sleepEachRow"),
        ("SELECT * FROM campaign_analytics WHERE sleep(1) = 0", "sleep"),
        ("SELECT * FROM campaign_analytics_v WHERE sent IN (SELECT sleep(3))", "sleep"),
        ("SELECT file('/etc/passwd')", "file"),
        ("SELECT `file`('/etc/passwd')", "file"),
        ("SELECT length(file('/etc/passwd'))", "file"),
        ("SELECT dictGet('d', 'a', toUInt64(1))", "dictGet"),
        ("SELECT dictGetString('d', 'a', toUInt64(1))", "dictGetString"),
        ("SELECT dictHas('d', toUInt64(1))", "dictHas"),
        ("SELECT joinGet('j', 'a', 1)", "joinGet"),
        ("SELECT hasColumnInTable('127.0.0.1', 'system', 'users', 'name')", "hasColumnInTable"),
        ("SELECT logTrace('x')", "logTrace"),
        ("SELECT generateSerialID('x')", "generateSerialID"),
        ("SELECT getServerSetting('path')", "getServerSetting"),
        ("SELECT showCertificate()", "showCertificate"),
        ("SELECT getClientHTTPHeader('Authorization')", "getClientHTTPHeader"),
        ("SELECT addressToSymbol(toUInt64(1))", "addressToSymbol"),
        ("SELECT demangle('x')", "demangle"),
        ("SELECT catboostEvaluate('/tmp/model.bin', 1)", "catboostEvaluate"),
        ("SELECT __scalarSubqueryResult('x')", "__scalarSubqueryResult"),
        ("SELECT arrayMap(x -> sleep(1), [1, 2])", "sleep"),
        ("WITH sleep(3) AS s SELECT s", "sleep"),
    ],
)
def test_functions_that_reach_outside_or_stall_are_refused(sql: str, name: str) -> None:
    assert refused(sql).lower() == f"refused: function {name.lower()}()"


@pytest.mark.parametrize(
    "sql",
    ["SELECT {p:String}", "SELECT * FROM campaign_analytics WHERE company_id = ?", "SELECT :p"],
)
def test_query_parameters_are_refused(sql: str) -> None:
    assert refused(sql).startswith("refused: query parameter")


# ------------------------------------------------------------------ the text itself


def test_a_megabyte_of_sql_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    from sluice.olap import readguard

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("an over-long query reached the tokenizer or the parser")

    monkeypatch.setattr(readguard, "_tokens", never)
    monkeypatch.setattr(readguard.sqlglot, "parse", never)
    message = refused("SELECT " + "1 + " * 250_000 + "1")
    assert message == f"refused: query longer than {MAX_SQL_CHARS} characters"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT " + "(" * 50 + "1" + ")" * 50,  # sqlglot recursion: RecursionError at 50
        "SELECT " + "(" * 10_000,
        "SELECT * FROM " + "(SELECT * FROM " * 40 + "campaign_analytics" + ")" * 40,
        "SELECT " + "[" * 100 + "1" + "]" * 100,
        "SELECT " + "abs(" * 100 + "1" + ")" * 100,
        "SELECT " + "NOT " * 3_000 + "1",  # no brackets: the parser's own recursion
        "SELECT " + "+".join(["1"] * 7_000),  # long, flat, within the limits
        "SELECT " + ",".join(f"c{i}" for i in range(3_000)) + " FROM campaign_analytics",
        "SELECT " + "((((,,,))))" * 2_000,
        "SELECT " + "x" * (MAX_SQL_CHARS - 7),
        "SELECT '" + "x" * (MAX_SQL_CHARS - 9) + "'",
    ],
)
@pytest.mark.timeout(30)  # a stall guard, not a speed check (bench/ measures speed)
def test_pathological_input_is_answered(sql: str) -> None:
    # measured: ~2.5 µs per character of ordinary SQL, up to ~15 µs per token for long
    # operator chains; anything larger is refused on its size (MAX_SQL_CHARS, MAX_TOKENS)
    try:
        check_read(sql, ALLOWED)
    except ReadRefused as exc:
        assert "\n" not in str(exc)


def test_nesting_beyond_the_limit_is_refused_by_name() -> None:
    deep = "SELECT " + "(" * (MAX_NESTING + 1) + "1" + ")" * (MAX_NESTING + 1)
    assert refused(deep) == f"refused: nested deeper than {MAX_NESTING} levels"
    assert refused("SELECT " + "NOT " * 3_000 + "1").startswith("refused: ")


def test_too_many_tokens_are_refused() -> None:
    assert refused("SELECT " + ",".join(["1"] * 5_000)).startswith("refused: query longer than")


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("", "refused: empty query"),
        ("   \n\t ", "refused: empty query"),
        (";", "refused: empty query"),
        ("-- nothing but a comment", "refused: empty query"),
        ("/* nothing */", "refused: empty query"),
        ("SELECT 1\x00; DROP TABLE campaign_analytics", "refused: NUL character in the query"),
        ("SELECT '\x00'", "refused: NUL character in the query"),
        ("SELECT 1\x1b[2J", "refused: control character U+001B in the query"),
        ("SELECT '\ud800'", "refused: the query is not valid UTF-8"),
        ("SELECT 'x", "refused: cannot parse: "),
        ("SELECT FROM WHERE", "refused: cannot parse: "),
        ("SELECT $1", "refused: cannot parse: "),
    ],
)
def test_malformed_text_is_refused(sql: str, message: str) -> None:
    assert refused(sql).startswith(message)


def test_bytes_are_not_text() -> None:
    with pytest.raises(ReadRefused, match="not text"):
        check_read(b"SELECT 1", ALLOWED)  # type: ignore[arg-type]


# ------------------------------------------------------------------ what passes

POSITIVE = [
    "SELECT * FROM campaign_analytics_v ORDER BY day LIMIT 20",
    "SELECT company_id, sum(sent) AS sent FROM campaign_analytics FINAL GROUP BY company_id",
    "SELECT * FROM campaign_analytics FINAL WHERE day >= today() - 7",
    "WITH c AS (SELECT company_id, sum(sent) AS s FROM campaign_analytics_v GROUP BY company_id) "
    "SELECT * FROM c ORDER BY s DESC",
    "WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a) SELECT * FROM b",
    "WITH 2 AS two SELECT sent * two FROM campaign_analytics_v",
    "SELECT a.company_id, a.sent, b.sent FROM campaign_analytics_v AS a "
    "JOIN mailbox_analytics_v AS b ON a.company_id = b.company_id AND a.day = b.day",
    "SELECT * FROM campaign_analytics_v AS a LEFT JOIN mailbox_analytics_v AS b USING (company_id)",
    "SELECT * FROM campaign_analytics_v, mailbox_analytics_v",
    "SELECT * FROM (SELECT company_id, sum(sent) AS s FROM campaign_analytics FINAL GROUP BY 1)",
    "SELECT count() FROM campaign_analytics_v WHERE campaign_id IN "
    "(SELECT campaign_id FROM sequence_step_analytics_v)",
    "SELECT count() FROM campaign_analytics_v WHERE campaign_id GLOBAL NOT IN "
    "(SELECT campaign_id FROM sequence_step_analytics_v)",
    "SELECT count() FROM campaign_analytics_v WHERE campaign_id IN ('a', 'b')",
    "SELECT 1 IN (abs(-1)), sent IN (sent, 1) FROM campaign_analytics_v",
    "SELECT * FROM campaign_analytics FINAL ORDER BY day DESC LIMIT 1 BY company_id",
    "SELECT * FROM campaign_analytics FINAL PREWHERE company_id = 'a' WHERE sent > 0",
    "SELECT company_id, sum(sent) FROM campaign_analytics FINAL GROUP BY company_id WITH TOTALS",
    "SELECT day, sum(sent) FROM campaign_analytics FINAL GROUP BY day WITH ROLLUP",
    "SELECT row_number() OVER (PARTITION BY company_id ORDER BY day) FROM campaign_analytics_v",
    "SELECT company_id FROM campaign_analytics_v UNION ALL SELECT company_id FROM lead_analytics_v",
    "SELECT company_id FROM campaign_analytics_v INTERSECT SELECT company_id FROM lead_analytics_v",
    "SELECT (SELECT max(sent) FROM campaign_analytics_v) AS m",
    "SELECT * FROM campaign_analytics_v ARRAY JOIN [1, 2] AS x",
    "SELECT arrayJoin([1, 2, 3])",
    "SELECT arrayMap(x -> x * 2, [1, 2]), quantile(0.5)(sent) FROM campaign_analytics_v",
    "SELECT * EXCEPT (updated) FROM campaign_analytics_v",
    "SELECT dummy FROM system.one",
    "SELECT table, sum(rows) FROM system.parts WHERE active GROUP BY table",
    "SELECT name, type FROM system.columns WHERE table = 'campaign_analytics'",
    "SELECT count() AS n FROM sluice_schema_migrations FINAL",
    "select company_id from campaign_analytics final -- a trailing comment",
    "/* leading */ SELECT 1",
    "SELECT 1;",
    "(SELECT 1)",
    "SELECT 'it''s', 'it\\'s', 'back\\\\slash', '%s {x}'",
    "SELECT sleep_count FROM (SELECT 1 AS sleep_count)",  # a name, not a call
    "SELECT file FROM (SELECT 1 AS file)",
    VERIFY_SQL.format(where=where_tenant("a'b")),
    CONFLICTS_SQL.format(where=""),
    *(f"SELECT * FROM {table}_v LIMIT 1" for table in OLAP_TABLES),
    *(f"SELECT * FROM {table} FINAL LIMIT 1" for table in OLAP_TABLES),
]


@pytest.mark.parametrize("sql", POSITIVE)
def test_reads_of_the_catalog_pass_and_normalize_to_a_fixed_point(sql: str) -> None:
    out = check_read(sql, ALLOWED)
    assert check_read(out, ALLOWED) == out
    assert "--" not in out and "/*" not in out  # comments never reach the engine


@pytest.mark.parametrize(
    ("sql", "reads"),
    [
        ("SHOW TABLES", "FROM system.tables WHERE database = CURRENT_DATABASE() ORDER BY name"),
        ("show tables;", "FROM system.tables"),
        ("DESCRIBE TABLE campaign_analytics", "FROM system.columns WHERE database ="),
        ("DESC campaign_analytics_v", "table = 'campaign_analytics_v' ORDER BY position"),
        ("DESCRIBE system.parts", "WHERE database = 'system' AND table = 'parts'"),
        ("EXISTS TABLE campaign_analytics", "FROM system.tables"),
        ("EXISTS no_such_table", "name = 'no_such_table'"),
        ("EXISTS `it's`", "name = 'it''s'"),
        ("SHOW CREATE TABLE campaign_analytics", "SELECT create_table_query AS statement"),
    ],
)
def test_introspection_statements_become_selects_of_system_tables(sql: str, reads: str) -> None:
    out = check_read(sql, ALLOWED)
    assert out.startswith("SELECT ") and reads in out, out


def test_the_caller_decides_which_relations_are_readable() -> None:
    assert check_read("SELECT * FROM t", {"t"}) == "SELECT * FROM t"
    with pytest.raises(ReadRefused, match="'campaign_analytics' is not readable"):
        check_read("SELECT * FROM campaign_analytics", {"t"})


def test_the_catalog_relations_are_the_tables_their_views_and_the_migrations() -> None:
    for table in OLAP_TABLES:
        assert {table, f"{table}_v"} <= ALLOWED
    assert "sluice_schema_migrations" in ALLOWED
    assert len(ALLOWED) == 2 * len(OLAP_TABLES) + 1


# ------------------------------------------------------------------ settings, helpers


def test_read_settings_bound_time_result_memory_and_forbid_writes() -> None:
    s = read_settings(5, 1_000, 2**20)
    assert s["readonly"] == 1
    assert s["max_execution_time"] == 5 and s["timeout_overflow_mode"] == "throw"
    assert s["max_result_rows"] == 1_000 and s["max_result_bytes"] == 2**20
    assert s["result_overflow_mode"] == "throw"
    assert s["max_memory_usage"] > 0 and s["max_threads"] == 1
    assert s["allow_introspection_functions"] == 0
    assert "allow_ddl" not in s  # readonly refuses DDL; allow_ddl=0 cannot be SET back
    assert s["max_bytes_before_external_group_by"] == 0  # a read never spills to disk
    assert s["max_bytes_ratio_before_external_sort"] == 0
    assert read_settings(0.5, 1, 1)["max_execution_time"] == 0.5


@pytest.mark.parametrize("args", [(0, 1, 1), (1, 0, 1), (1, 1, 0), (-1, 1, 1)])
def test_read_settings_refuse_unlimited(args: tuple[float, int, int]) -> None:
    with pytest.raises(ValueError):
        read_settings(*args)


def test_settings_clause_quotes_strings_and_refuses_odd_names() -> None:
    clause = settings_clause({"readonly": 1, "mode": "it's", "t": 0.5})
    assert clause == "readonly = 1, mode = 'it\\'s', t = 0.5"
    with pytest.raises(ValueError):
        settings_clause({"a = 1, readonly": 0})


def test_strip_output_format_takes_only_a_known_trailing_format() -> None:
    assert strip_output_format("SELECT 1\n FORMAT Native") == ("SELECT 1\n ", "Native")
    assert strip_output_format("SELECT 1 FORMAT JSON;") == ("SELECT 1 ", "JSON")
    assert strip_output_format("SELECT 'FORMAT CSV'") == ("SELECT 'FORMAT CSV'", None)
    assert "Native" in OUTPUT_FORMATS
    with pytest.raises(ReadRefused, match="output format Template"):
        strip_output_format("SELECT 1 FORMAT Template")
    # what is left still goes through check_read
    rest, _ = strip_output_format("SELECT 1 INTO OUTFILE '/tmp/x' FORMAT CSV")
    with pytest.raises(ReadRefused, match="INTO OUTFILE"):
        check_read(rest, ALLOWED)
