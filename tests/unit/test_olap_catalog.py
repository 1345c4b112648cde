"""The OLAP catalog, the migrations and the engine agree on every table and column."""

from __future__ import annotations

import re

import pytest

from sluice.olap import OLAP_TABLES, OlapError
from sluice.olap.client import OlapClient
from sluice.olap.lint import parse
from sluice.olap.migrations import available
from streams.engine import Engine


def ddl_tables() -> dict:
    tables = {}
    for migration in available():
        parsed, errors = parse(migration.sql)
        assert not errors, migration.name
        tables.update({t.name: t for t in parsed})
    return tables


def test_migrations_are_versioned_once_each():
    versions = [m.version for m in available()]
    assert versions == sorted(set(versions)) and versions[:3] == [1, 2, 3]


@pytest.mark.parametrize("table", sorted(OLAP_TABLES))
def test_catalog_engine_and_ddl_agree(table):
    spec = OLAP_TABLES[table]
    ddl = ddl_tables()[table]
    assert [c.name for c in ddl.columns] == list(spec.columns)
    assert Engine().columns(table) == list(spec.columns)
    assert [c for c, _ in ddl.key] == list(spec.key)
    assert all(c.comment for c in ddl.columns)
    assert "ReplacingMergeTree" in ddl.engine and not ddl.ttl


@pytest.mark.parametrize("table", sorted(OLAP_TABLES))
def test_every_table_has_a_final_view(table):
    sql = "\n".join(m.sql for m in available())
    view = re.search(rf"CREATE VIEW IF NOT EXISTS {table}_v AS(.*?);", sql, re.DOTALL)
    assert view and re.search(rf"FROM {table} FINAL", view.group(1))


def test_engine_writes_only_catalog_tables():
    assert set(Engine().layouts) == set(OLAP_TABLES)


def test_writer_refuses_tables_outside_the_catalog():
    client = OlapClient(client=None, url="chdb://unused")  # type: ignore[arg-type]
    with pytest.raises(OlapError, match="not in the OLAP catalog"):
        client.insert("analytics_pool_metrics", ["a"], [[1]])
