"""The read path against a real engine (chDB, no broker): sluice/olap/reader.py.

Proves on chDB 26.9 what sluice/olap/readguard.py's docstring claims: allowed reads give
the same rows as the original SQL, the engine's own parser agrees with the refusals,
limits interrupt reads, and a read in flight never holds up the writer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from sluice.olap import OlapClient, OlapError, connect, migrate
from sluice.olap.reader import (
    OlapReader,
    ReadBusy,
    ReadLimitExceeded,
    ReadLimits,
    effective_settings,
)
from sluice.olap.readguard import (
    ENGINE_AST_SQL,
    ReadRefused,
    catalog_relations,
    check_engine_ast,
    check_read,
    read_settings,
)

try:
    from tests.unit.test_readguard import POSITIVE, TABLE_FUNCTIONS
except ModuleNotFoundError:  # tests/ on sys.path rather than a package
    from unit.test_readguard import POSITIVE, TABLE_FUNCTIONS  # type: ignore[no-redef]

ALLOWED = catalog_relations()
CAMPAIGN_COLUMNS = ["company_id", "campaign_id", "day", "sent", "opened_tracked", "_version"]
ROWS = 1_000  # a triple cross join of these runs for minutes: the long read


@pytest.fixture(scope="module")
def store(reference_olap: OlapClient) -> SimpleNamespace:
    """The session's chDB store (one engine per process), migrated, with this module's rows
    under its own company id (other tests share the store and filter on theirs)."""
    migrate(reference_olap)
    tag = f"rg-{uuid.uuid4().hex[:6]}"
    rows = [[tag, f"c{i:04d}", dt.date(2026, 1, 1 + i % 28), i, i % 3, 1] for i in range(ROWS)]
    reference_olap.insert("campaign_analytics", CAMPAIGN_COLUMNS, rows)
    reference_olap.insert(
        "mailbox_analytics",
        ["company_id", "mailbox_id", "day", "sent", "_version"],
        [[tag, f"m{i}", dt.date(2026, 1, 1 + i), i, 1] for i in range(5)],
    )
    long_read = (
        "SELECT count() FROM campaign_analytics_v AS a, campaign_analytics_v AS b, "
        f"campaign_analytics_v AS c WHERE a.company_id = '{tag}' AND b.company_id = '{tag}' "
        f"AND c.company_id = '{tag}' AND cityHash64(a.campaign_id, b.campaign_id, "
        "c.campaign_id) % 7 = 3"
    )
    return SimpleNamespace(writer=reference_olap, url=reference_olap.url, tag=tag, long=long_read)


def reader(store: SimpleNamespace, **limits: float) -> OlapReader:
    return OlapReader(store.url, limits=ReadLimits(**limits))  # type: ignore[arg-type]


# ------------------------------------------------------------------ reads that pass


def test_allowed_reads_return_what_the_original_sql_returns(store: SimpleNamespace) -> None:
    tag = store.tag
    where = f"company_id = '{tag}'"
    queries = [
        f"SELECT * FROM campaign_analytics_v WHERE {where} ORDER BY day, campaign_id LIMIT 20",
        f"SELECT day, sum(sent) AS s, countIf(opened_tracked > 0) AS o FROM campaign_analytics "
        f"FINAL WHERE {where} GROUP BY day ORDER BY day",
        f"WITH c AS (SELECT campaign_id, sent FROM campaign_analytics_v WHERE {where}) "
        "SELECT count(), sum(sent), max(campaign_id) FROM c",
        f"SELECT a.day, a.sent, b.sent FROM mailbox_analytics_v AS a JOIN campaign_analytics_v "
        f"AS b ON a.company_id = b.company_id AND a.day = b.day WHERE a.{where} "
        "ORDER BY a.day, b.sent LIMIT 30",
        f"SELECT count() FROM campaign_analytics_v WHERE {where} AND day IN "
        f"(SELECT day FROM mailbox_analytics_v WHERE {where})",
        f"SELECT * FROM (SELECT day, sum(sent) AS s FROM campaign_analytics_v WHERE {where} "
        "GROUP BY day) WHERE s > 1000 ORDER BY day",
        f"SELECT campaign_id, day FROM campaign_analytics FINAL WHERE {where} "
        "ORDER BY day, campaign_id LIMIT 1 BY day",
        f"SELECT day, sent, row_number() OVER (PARTITION BY day ORDER BY sent DESC) AS rn "
        f"FROM campaign_analytics_v WHERE {where} ORDER BY day, rn LIMIT 10",
        # ORDER BY after a UNION ALL binds to its last SELECT only: order the union outside
        f"SELECT day FROM (SELECT day FROM mailbox_analytics_v WHERE {where} UNION ALL "
        f"SELECT day FROM campaign_analytics_v WHERE {where} AND sent < 3) ORDER BY day",
        f"SELECT concat(company_id, '/', campaign_id), toStartOfMonth(day), "
        f"if(sent > 500, 'big', 'small'), 'it''s', 'back\\\\slash' FROM campaign_analytics_v "
        f"WHERE {where} ORDER BY campaign_id LIMIT 3",
        "SELECT name FROM system.tables WHERE database = currentDatabase() "
        "AND name LIKE 'campaign%' ORDER BY name",
        "SELECT count() AS n FROM sluice_schema_migrations FINAL",
    ]
    r = reader(store)
    try:
        for sql in queries:
            _, want = store.writer.query(sql)
            _, got = r.query(sql)
            assert [list(row) for row in got] == [list(row) for row in want], sql
    finally:
        r.close()


def test_introspection_statements_answer_through_the_system_tables(store: SimpleNamespace) -> None:
    r = reader(store)
    try:
        columns, rows = r.query("SHOW TABLES")
        assert columns == ["name"] and ("campaign_analytics_v",) in rows
        _, described = r.query("DESCRIBE TABLE campaign_analytics")
        _, want = store.writer.query("DESCRIBE TABLE campaign_analytics")
        assert [row[:2] for row in described] == [row[:2] for row in want]  # name, type
        assert r.query("EXISTS TABLE campaign_analytics")[1] == [(1,)]
        assert r.query("EXISTS TABLE no_such_table")[1] == [(0,)]
    finally:
        r.close()


# ------------------------------------------------------------------ the engine agrees


@pytest.mark.parametrize("sql", POSITIVE)
def test_the_engines_own_parser_accepts_what_the_guard_passes(
    store: SimpleNamespace, sql: str
) -> None:
    checked = check_read(sql, ALLOWED)
    (ast,), *_ = store.writer._client.query(ENGINE_AST_SQL, parameters={"sql": checked}).result_rows
    check_engine_ast(ast, ALLOWED)


HOSTILE = [
    *(f"SELECT * FROM {source}" for source, _ in TABLE_FUNCTIONS),
    "SELECT * FROM campaign_analytics INTO OUTFILE '/tmp/sluice-x' TRUNCATE FORMAT CSV",
    "SELECT 1 INTO OUTFILE '/tmp/sluice-x' AND STDOUT",
    "SELECT * FROM campaign_analytics FORMAT JSON",
    "SELECT * FROM campaign_analytics SETTINGS readonly = 0",
    "SELECT * FROM (SELECT * FROM campaign_analytics SETTINGS max_execution_time = 0)",
    "SELECT * FROM system.users",
    "SELECT * FROM system.settings",
    "SELECT * FROM default.emails",
    'SELECT * FROM "/etc/passwd"',
    "WITH 1 AS users SELECT * FROM users",
    "SELECT 1 WHERE 1 IN system.users",
    "SELECT 1 WHERE 1 GLOBAL NOT IN emails",
    "SELECT 1 WHERE 1 IN (file('/etc/passwd'))",
    "SELECT 1 WHERE 1 IN (emails)",
    "SELECT 1 WHERE 1 IN ((system.users))",
    "WITH emails AS x SELECT 1 WHERE 1 IN (x)",
    "SELECT globalIn(1, emails)",
    "SELECT sleep(3)",
    "SELECT file('/etc/passwd')",
    "SELECT dictGet('d', 'a', toUInt64(1))",
    "WITH x AS (SELECT * FROM url('http://127.0.0.1:28999/', CSV)) SELECT * FROM x",
    "SELECT * FROM campaign_analytics WHERE sent IN (SELECT * FROM file('/etc/passwd'))",
    "SELECT * FROM (EXPLAIN SELECT 1)",
    "DROP TABLE campaign_analytics",
    "INSERT INTO campaign_analytics SELECT * FROM campaign_analytics",
    "SYSTEM SHUTDOWN",
    "SET readonly = 0",
    "SELECT {p:String}",
]


@pytest.mark.parametrize("sql", HOSTILE)
def test_the_engines_own_parser_refuses_the_hostile_inputs_too(
    store: SimpleNamespace, sql: str
) -> None:
    """check_engine_ast is a second, independent verdict: on ClickHouse's own reading of
    the raw hostile text (which never runs: parseQueryToJSON only parses)."""
    try:
        result = store.writer._client.query(ENGINE_AST_SQL, parameters={"sql": sql})
    except Exception as exc:  # ClickHouse cannot parse it at all: nothing would run
        assert "SYNTAX_ERROR" in str(exc) or "Syntax error" in str(exc), exc
        return
    with pytest.raises(ReadRefused):
        check_engine_ast(result.result_rows[0][0], ALLOWED)
    with pytest.raises(ReadRefused):
        check_read(sql, ALLOWED)


def test_parsing_runs_nothing(store: SimpleNamespace) -> None:
    started = time.perf_counter()
    store.writer._client.query(
        ENGINE_AST_SQL, parameters={"sql": "SELECT sleep(3), (SELECT sleep(3))"}
    )
    # run, it would take 3 s at least; parsed (milliseconds) it returns well before
    assert time.perf_counter() - started < 2.5


# ------------------------------------------------------------------ the engine's gaps


def test_chdb_readonly_alone_writes_into_outfile_and_reads_scalar_file(
    store: SimpleNamespace, tmp_path: Path
) -> None:
    """Pins the chDB 26.9 behaviour the parser check exists for (DESIGN §6). If this
    fails, chDB closed the gap: keep the parser check and update the docstrings."""
    out = tmp_path / "outfile.tsv"
    probe = connect(store.url)  # its own handle: the writer's stays clean
    try:
        probe._client.query(f"SELECT 1 INTO OUTFILE '{out}'", settings={"readonly": 1})
        assert out.exists(), "readonly=1 refused INTO OUTFILE: chDB changed"
        secret = tmp_path / "secret.txt"
        secret.write_text("s3cr3t")
        _, rows = probe.query(f"SELECT file('{secret}') SETTINGS readonly = 1")
        assert rows == [("s3cr3t",)], "readonly=1 refused scalar file(): chDB changed"
        with pytest.raises(OlapError, match="READONLY"):
            probe.query(f"SELECT * FROM file('{secret}', 'LineAsString') SETTINGS readonly = 1")
    finally:
        probe.close()


def test_the_reader_refuses_them_and_writes_nothing(store: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "outfile.tsv"
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t")
    r = reader(store)
    try:
        with pytest.raises(ReadRefused, match="^refused: INTO OUTFILE$"):
            r.query(f"SELECT 1 INTO OUTFILE '{out}'")
        with pytest.raises(ReadRefused, match=r"^refused: function file\(\)$"):
            r.query(f"SELECT file('{secret}')")
        with pytest.raises(ReadRefused, match=r"^refused: table function file\(\)$"):
            r.query(f"SELECT * FROM file('{secret}', 'LineAsString')")
        with pytest.raises(ReadRefused, match="^refused: more than one statement$"):
            r.query("SELECT 1; DROP TABLE campaign_analytics")
        assert not out.exists()
        assert r.query("SELECT count() FROM campaign_analytics_v")[1][0][0] >= ROWS
    finally:
        r.close()


def test_settings_on_a_shared_handle_would_stick(store: SimpleNamespace) -> None:
    """Why reads pass their settings per query and never SET them: clickhouse-connect's
    chDB backend sends a non-SELECT with per-call settings as SET ... / SET ... = DEFAULT,
    and `SET readonly = DEFAULT` is refused in readonly mode, so the handle stays
    read-only: on the writer's handle, every later insert would fail."""
    probe = connect(store.url)
    try:
        with pytest.raises(Exception, match="READONLY"):
            probe._client.query(
                "CREATE TABLE IF NOT EXISTS rg_probe (a UInt8) ENGINE = Memory",
                settings={"readonly": 1},
            )
        _, rows = probe.query("SELECT getSetting('readonly')")
        assert rows == [(1,)]  # stuck
    finally:
        probe.close()


# ------------------------------------------------------------------ limits


def test_a_long_read_is_interrupted_by_max_execution_time(store: SimpleNamespace) -> None:
    r = reader(store, max_execution_time_s=0.5)
    try:
        started = time.perf_counter()
        with pytest.raises(ReadLimitExceeded, match=r"ran longer than 0\.5 s"):
            r.query(store.long)
        assert (
            time.perf_counter() - started < 20
        )  # stopped by the limit, not run to its end  # measured: 0.52–0.60 s
        # the handle that failed is gone: the next read sees only its own rows
        _, rows = r.query(
            f"SELECT count() FROM campaign_analytics_v WHERE company_id = '{store.tag}'"
        )
        assert rows == [(ROWS,)]
    finally:
        r.close()


def test_a_failed_read_does_not_leak_into_the_next_one(store: SimpleNamespace) -> None:
    """chDB hands what a failed query produced out with the next query on its handle."""
    r = reader(store, max_execution_time_s=0.5)
    try:
        partial = "SELECT 7 AS x UNION ALL " + store.long.replace(
            "SELECT count()", "SELECT toUInt8(count() % 2) AS x", 1
        )
        with pytest.raises(ReadLimitExceeded):
            r.query(partial)
        assert r.query("SELECT 42 AS x")[1] == [(42,)]
    finally:
        r.close()


def test_result_size_and_memory_are_bounded(store: SimpleNamespace) -> None:
    r = OlapReader(store.url, limits=ReadLimits(max_result_rows=10, max_memory_usage=16 * 2**20))
    try:
        with pytest.raises(ReadLimitExceeded, match="over 10 rows"):
            r.query(f"SELECT * FROM campaign_analytics_v WHERE company_id = '{store.tag}'")
        assert len(r.query("SELECT * FROM campaign_analytics_v LIMIT 10")[1]) <= 10
        with pytest.raises(ReadLimitExceeded, match="more than 16 MiB"):
            r.query(
                "SELECT length(groupArray(concat(a.campaign_id, b.campaign_id))) FROM "
                "campaign_analytics_v AS a, campaign_analytics_v AS b "
                f"WHERE a.company_id = '{store.tag}' AND b.company_id = '{store.tag}'"
            )
    finally:
        r.close()


# ------------------------------------------------------------------ the writer never waits


def _insert_batch(writer: OlapClient, tag: str, k: int) -> float:
    rows = [[f"{tag}-w", f"w{k}-{i}", dt.date(2026, 2, 1), i, 0, k] for i in range(200)]
    started = time.perf_counter()
    writer.insert("campaign_analytics", CAMPAIGN_COLUMNS, rows)
    return time.perf_counter() - started


def test_an_insert_completes_while_a_read_is_in_flight(store: SimpleNamespace) -> None:
    r = reader(store, max_execution_time_s=3)
    outcome: dict[str, object] = {}

    def read() -> None:
        try:
            outcome["rows"] = r.query(store.long)
        except ReadRefused as exc:
            outcome["refused"] = exc

    thread = threading.Thread(target=read)
    thread.start()
    try:
        time.sleep(0.3)  # the read is running
        latencies = [_insert_batch(store.writer, store.tag, k) for k in range(5)]
        still_reading = thread.is_alive()
    finally:
        thread.join(timeout=30)
        r.close()
    assert still_reading, "the read ended before the inserts: the test proves nothing"
    assert max(latencies) < 1.0, latencies  # measured: p50 15–30 ms, max < 0.4 s
    assert isinstance(outcome.get("refused"), ReadLimitExceeded)
    _, rows = store.writer.query(
        f"SELECT count() FROM campaign_analytics_v WHERE company_id = '{store.tag}-w'"
    )
    assert rows == [(5 * 200,)]


def test_control_one_client_for_reads_and_writes_makes_the_insert_wait(
    store: SimpleNamespace,
) -> None:
    """The design before: the worker read and wrote through one OlapClient (one lock)."""
    shared = connect(store.url)

    def read() -> None:
        with pytest.raises(OlapError, match="TIMEOUT_EXCEEDED"):
            shared.query(store.long + " SETTINGS max_execution_time = 1.5")

    thread = threading.Thread(target=read)
    thread.start()
    try:
        time.sleep(0.3)
        waited = _insert_batch(shared, f"{store.tag}-c", 0)
    finally:
        thread.join(timeout=30)
        shared.close()
    assert waited > 0.8, waited  # it waited for the read (measured: the read's remaining 1.2 s)


def test_one_read_at_a_time_and_the_next_is_refused_at_once(store: SimpleNamespace) -> None:
    r = reader(store, max_execution_time_s=2)

    def read() -> None:
        with pytest.raises(ReadLimitExceeded):
            r.query(store.long)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        time.sleep(0.3)
        started = time.perf_counter()
        with pytest.raises(ReadBusy, match="another read is running"):
            r.query("SELECT 1")
        # not after the running read (its 2 s end ~1.7 s from here): refused without waiting
        assert time.perf_counter() - started < 1.2
    finally:
        thread.join(timeout=30)
    assert r.query("SELECT 1")[1] == [(1,)]
    r.close()


def test_async_reads_run_on_the_readers_own_thread(store: SimpleNamespace) -> None:
    r = reader(store, max_execution_time_s=1)

    async def scenario() -> None:
        names = await asyncio.gather(r.query_async("SELECT 1"), return_exceptions=True)
        assert names == [(["1"], [(1,)])]
        running = asyncio.ensure_future(r.query_async(store.long))
        await asyncio.sleep(0.3)
        with pytest.raises(ReadBusy):
            await r.query_async("SELECT 1")
        running.cancel()  # the client went away: the read still ends at its time limit
        with pytest.raises(asyncio.CancelledError):
            await running
        for _ in range(40):
            try:
                assert (await r.query_async("SELECT 2"))[1] == [(2,)]
                return
            except ReadBusy:
                await asyncio.sleep(0.1)
        raise AssertionError("the reader stayed busy after the cancelled read")

    seen: list[str] = []
    original = r._run

    def spy(sql: str) -> tuple[list[str], list[tuple]]:
        seen.append(threading.current_thread().name)
        return original(sql)

    r._run = spy  # type: ignore[method-assign]
    try:
        asyncio.run(scenario())
    finally:
        r.close()
    assert seen and all(name.startswith("sluice-read") for name in seen), seen


# ------------------------------------------------------------------ a server (HTTP)


def _port() -> int:
    for port in range(28100, 28999):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 28100-28999")


def test_over_http_the_same_checks_and_limits_apply(tmp_path: Path) -> None:
    """Against the chDB HTTP front (dev/olap_server.py; a real server cannot run here):
    settings go as URL parameters and the server's user may change them."""
    port = _port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dev.olap_server", "--path", str(tmp_path / "olap")]
        + ["--port", str(port)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while "serving " not in (tmp_path / "serve.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, "olap serve did not start"
            time.sleep(0.1)
        writer = connect(url)
        migrate(writer)
        r = OlapReader(url, limits=ReadLimits(max_execution_time_s=0.5))
        assert r.query("SELECT count() FROM campaign_analytics_v")[1] == [(0,)]
        with pytest.raises(ReadRefused, match="^refused: INTO OUTFILE$"):
            r.query("SELECT 1 INTO OUTFILE '/tmp/sluice-rg-http'")
        with pytest.raises(ReadRefused, match=r"table function numbers\(\)"):
            r.query("SELECT count() FROM numbers(100000000000)")
        rows = [["t", f"c{i}", dt.date(2026, 1, 1), i, 0, 1] for i in range(ROWS)]
        writer.insert("campaign_analytics", CAMPAIGN_COLUMNS, rows)
        cross = (
            "SELECT count() FROM campaign_analytics AS a, campaign_analytics AS b, "
            "campaign_analytics AS c "
            "WHERE cityHash64(a.campaign_id, b.campaign_id, c.campaign_id) % 7 = 3"
        )
        started = time.perf_counter()
        with pytest.raises(ReadLimitExceeded, match="ran longer than 0.5 s"):
            r.query(cross)
        assert time.perf_counter() - started < 20  # stopped by the limit, not run to its end
        assert r.query("SELECT count() FROM campaign_analytics")[1] == [(ROWS,)]
        writer.command("CREATE TABLE IF NOT EXISTS rg_ddl_probe (a UInt8) ENGINE = Memory")
        writer.command("DROP TABLE rg_ddl_probe SYNC")  # the front's session was not left DDL-less
        r.close()
        writer.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


# ------------------------------------------------------------------ settings vs. the user


class _Def(SimpleNamespace):
    value: str
    readonly: int


def test_effective_settings_send_what_the_user_may_change() -> None:
    wanted = read_settings(10, 100, 1000)
    server = {name: _Def(value="0", readonly=0) for name in wanted}
    assert effective_settings(wanted, server) == wanted
    del server["max_bytes_ratio_before_external_sort"]  # an older server: optional, dropped
    assert "max_bytes_ratio_before_external_sort" not in effective_settings(wanted, server)


def test_a_readonly_user_whose_profile_holds_the_limits_is_accepted() -> None:
    wanted = read_settings(10, 100, 1000)
    profile = {
        "readonly": "1",
        "max_execution_time": "5",
        "timeout_overflow_mode": "throw",
        "max_result_rows": "100",
        "max_result_bytes": "1000",
        "result_overflow_mode": "throw",
        "max_memory_usage": str(2**30),
    }
    server = {name: _Def(value=profile.get(name, "0"), readonly=1) for name in wanted}
    assert effective_settings(wanted, server) == {}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_execution_time", "0"),  # unlimited
        ("max_execution_time", "60"),  # looser than the reader's
        ("result_overflow_mode", "break"),  # silent partial results
        ("readonly", "0"),
    ],
)
def test_a_user_that_cannot_set_a_limit_it_lacks_is_refused(name: str, value: str) -> None:
    wanted = read_settings(10, 100, 1000)
    server = {n: _Def(value=str(v), readonly=0) for n, v in wanted.items()}
    server[name] = _Def(value=value, readonly=1)
    with pytest.raises(OlapError, match=f"cannot set {name}"):
        effective_settings(wanted, server)


def test_a_server_without_a_required_setting_is_refused() -> None:
    wanted = read_settings(10, 100, 1000)
    server = {n: _Def(value="0", readonly=0) for n in wanted if n != "max_result_bytes"}
    with pytest.raises(OlapError, match="no setting max_result_bytes"):
        effective_settings(wanted, server)
