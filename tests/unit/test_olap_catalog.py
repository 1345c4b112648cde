"""The catalog is the one source of the OLAP's columns: the migrations rendered from it
create exactly its tables (in chDB), the engine fills exactly its columns, the docs show
exactly its text; released migrations never change; cluster mode renders replicated DDL
that parses; two migrators never run at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import sqlglot

from sluice.olap import OLAP_TABLES, OlapError
from sluice.olap import migrations as mig
from sluice.olap.catalog import reference_markdown
from sluice.olap.client import OlapClient, connect
from sluice.olap.ddl import Target, create_table
from sluice.olap.migrations import VERSIONS, Migration, available, migrate
from streams.engine import Engine
from tests import _olap

DOCS = Path(__file__).resolve().parents[2] / "docs" / "olap.md"

# The rendering of every released migration, pinned: editing one would make existing
# stores refuse to start ("changed after it was applied"). Add a migration instead.
RELEASED = {
    1: "a446cbd488b320306574fde6f73dbcc014cce0170673d4dbd3ecd10c7cad24ec",
    2: "07220a550a5ed70e379454ce0777d32bba5dab7361a7c8da664e1ce986b3caed",
    3: "3c40ef4eb6b40e3cb57c7741d2ab85e0aa34b3d5d76004145e70072ed243fbc3",
    4: "aff5cb03e0a230aad35bb3e1efb5c558bec0487a2d06ff40e358b6d08290725f",
    5: "0cef7b1654ebae1698fb66ae76d5078bb04c9fb1ac6621483f554bcacfe9878d",
}


def test_versions_are_contiguous_and_released_ones_never_change():
    assert list(VERSIONS) == list(range(1, len(VERSIONS) + 1))
    for migration in available():
        if migration.version in RELEASED:
            assert migration.checksum == RELEASED[migration.version], migration.name


def test_legacy_file_checksums_are_accepted_only_for_the_rendering_that_replaced_them():
    m = Migration(2, VERSIONS[2])
    legacy, rendered = mig.LEGACY[2]
    assert rendered == m.checksum and m.accepts(legacy) and m.accepts(m.checksum)
    assert not m.accepts("0" * 64)


@pytest.fixture
def store(tmp_path, reference_olap):
    """A database of this test's own: on the session's chDB engine (one per process; its
    one session USEs it), or on the CLICKHOUSE_TEST_URL server (tests/_olap.py)."""
    name = f"catalog_{time.time_ns()}"
    if _olap.on_server():
        url = _olap.new_store_url(tmp_path, name)
        client = connect(url)
        yield client, urlparse(url).path.strip("/")
        client.close()
        _olap.drop_store(url)
        return
    reference_olap.command(f"CREATE DATABASE {name}")
    client = connect(reference_olap.url)
    client.command(f"USE {name}")
    yield client, name
    reference_olap.command(f"DROP DATABASE {name} SYNC")


def test_migrations_create_exactly_the_catalog(store):
    client, db = store
    assert {m.version for m in migrate(client)} == set(VERSIONS)
    assert migrate(client) == []  # idempotent
    for table in OLAP_TABLES.values():
        _, cols = client.query(
            "SELECT name, type, comment FROM system.columns "
            "WHERE database = {db:String} AND table = {t:String} ORDER BY position",
            parameters={"db": db, "t": table.name},
        )
        assert [tuple(c) for c in cols] == [(c.name, c.type, c.comment) for c in table.definitions]
        _, meta = client.query(
            "SELECT engine, sorting_key, comment FROM system.tables "
            "WHERE database = {db:String} AND name = {t:String}",
            parameters={"db": db, "t": table.name},
        )
        engine, sorting_key, comment = meta[0]
        assert engine == "ReplacingMergeTree" and comment == (table.comment or "")
        assert sorting_key == ", ".join(table.key)
        _, view = client.query(
            "SELECT as_select FROM system.tables "
            "WHERE database = {db:String} AND name = {v:String}",
            parameters={"db": db, "v": table.view},
        )
        assert f"FROM {db}.{table.name} FINAL" in view[0][0]


@pytest.mark.parametrize("table", sorted(OLAP_TABLES))
def test_the_engine_fills_exactly_the_catalog_columns(table):
    assert Engine().columns(table) == list(OLAP_TABLES[table].columns)


def test_engine_writes_only_catalog_tables():
    assert set(Engine().layouts) == set(OLAP_TABLES)


def test_writer_refuses_tables_outside_the_catalog():
    client = OlapClient(client=None, url="chdb://unused")  # type: ignore[arg-type]
    with pytest.raises(OlapError, match="not in the OLAP catalog"):
        client.insert("analytics_pool_metrics", ["a"], [[1]])


def test_docs_show_the_catalog():
    text = DOCS.read_text()
    block = text.split("<!-- catalog:begin -->\n", 1)[1].split("<!-- catalog:end -->", 1)[0]
    assert block == reference_markdown(), (
        "docs/olap.md is out of date: paste `python -m sluice.olap.catalog` between the markers"
    )


def test_cluster_mode_renders_replicated_on_cluster_ddl_that_parses():
    target = Target("prod")
    statements = [s for m in available(target) for s in m.statements()]
    assert statements and all(" ON CLUSTER prod" in s for s in statements)
    for statement in statements:
        sqlglot.parse_one(statement, read="clickhouse")  # well-formed ClickHouse
    ddl = create_table(OLAP_TABLES["campaign_analytics"], target)
    assert (
        "ENGINE = ReplicatedReplacingMergeTree("
        "'/clickhouse/tables/{shard}/{database}/campaign_analytics', '{replica}', _version)"
    ) in ddl
    assert "replicated_deduplication_window_seconds = 86400" in ddl
    assert "non_replicated" not in ddl
    assert " ON CLUSTER '{cluster}'" in create_table(
        OLAP_TABLES["lead_analytics"], Target("{cluster}")
    )
    events = create_table(OLAP_TABLES["admin_system_events"], target)
    assert "'{replica}', _version, _deleted)" in events
    audit = create_table(OLAP_TABLES["admin_audit_log"], target)
    assert "'{replica}')\nORDER BY (tenant_id, seq, event_id)" in audit


class _Clusters:
    """A client that answers system.clusters (a server's; chDB has none to speak of)."""

    def __init__(self, shards: int) -> None:
        self.shards = shards

    def query(self, sql: str, parameters: dict | None = None):
        return ["n"], [(self.shards,)]


@pytest.mark.parametrize(
    ("shards", "message"),
    [(0, "knows no cluster 'prod'"), (2, "has 2 shards: Sluice's tables are replicated")],
)
def test_clusters_sluice_cannot_use_are_refused_by_name(shards, message):
    with pytest.raises(OlapError, match=message):
        mig._check_cluster(_Clusters(shards), "prod")  # type: ignore[arg-type]
    mig._check_cluster(_Clusters(1), "prod")  # type: ignore[arg-type]


def test_two_migrators_at_once_apply_each_version_once(store, monkeypatch):
    client, _ = store
    applied: list[int] = []
    errors: list[BaseException] = []
    real = Migration.statements

    def slow(self, target=None):  # widen the race
        time.sleep(0.05)
        return real(self, target)

    monkeypatch.setattr(Migration, "statements", slow)

    def run() -> None:
        try:
            applied.extend(m.version for m in migrate(client))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(applied) == sorted(VERSIONS)  # each version by exactly one migrator
    _, rows = client.query("SELECT count() FROM sluice_schema_migrations")
    assert rows[0][0] == len(VERSIONS)


def test_a_held_lock_makes_the_next_migrator_wait_then_fail_in_one_line(store, monkeypatch):
    client, _ = store
    monkeypatch.setattr(mig, "LOCK_WAIT_S", 1.0)
    with mig.MigrationLock(client, Target()), pytest.raises(OlapError) as info:
        migrate(client)
    assert "another process is migrating" in str(info.value) and "\n" not in str(info.value)
    assert migrate(client)  # released: the next one goes through


def test_a_stale_lock_left_by_a_dead_migrator_is_broken(store, monkeypatch):
    client, _ = store
    lock = mig.MigrationLock(client, Target())
    lock.__enter__()  # and never __exit__: the migrator died
    monkeypatch.setattr(mig, "LOCK_STALE_S", 0.5)
    time.sleep(0.8)
    assert migrate(client)


def test_the_session_store_keeps_its_database(reference_olap):
    """(The stores above USE a database of their own on the shared engine.)"""
    before = reference_olap.query("SELECT currentDatabase()")[1][0][0]
    assert before == "default" or before.startswith("sluice_test_")


def test_the_sharded_tables_views_have_the_catalog_types_in_any_session(store):
    """The views combine the shards with the columns, types and meanings users read."""
    from sluice.olap.catalog import SHARD_COLUMN
    from streams.engine import SHARD_COLUMN as ENGINE_SHARD

    assert ENGINE_SHARD == SHARD_COLUMN
    client, _ = store
    migrate(client)
    for table in OLAP_TABLES.values():
        _, described = client.query(f"DESCRIBE TABLE {table.view}")
        got = [(name, kind) for name, kind, *_ in described]
        assert got == [(c, table.column(c).type) for c in table.view_columns], table.name
        for join_use_nulls in (0, 1):  # a session's setting never changes a view's types
            client.query(f"SELECT * FROM {table.view} SETTINGS join_use_nulls = {join_use_nulls}")
