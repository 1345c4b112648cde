"""ClickHouse DDL rendered from the catalog: one server (or embedded chDB), or a cluster.

Single node (``CLICKHOUSE_CLUSTER`` unset): ``ReplacingMergeTree`` tables with
``non_replicated_deduplication_window`` (so the writer's ``insert_deduplication_token``
works), and ``<table>_v`` views that read ``FINAL``.

Cluster (``CLICKHOUSE_CLUSTER=<name>``): every statement runs ``ON CLUSTER`` and the
tables are ``ReplicatedReplacingMergeTree`` with the ``{shard}``/``{replica}`` macros each
server defines, deduplicating retried inserts for a day
(``replicated_deduplication_window_seconds``; the default is one hour).

Why replicated and not sharded (no ``Distributed`` tables): the warehouse is lean by
design — aggregates and a narrow compliance record, bounded in volume — so one shard
holds it, and replicas give the availability. ``FINAL`` is exact only where every version
of a row lives on one shard; a ``Distributed`` table over ``cityHash64(company_id)``
would keep that, but inserts through it are split per shard, which defeats the insert
deduplication token and, unless ``distributed_foreground_insert`` is on, acknowledges
before the shard has the rows. :func:`sluice.olap.migrations.migrate` therefore refuses a
cluster with more than one shard, with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from sluice.olap.catalog import Column, Table

DEDUP_BLOCKS = 10_000  # inserts remembered for deduplication, per table
DEDUP_SECONDS = 86_400  # replicated tables: how long a retried insert is recognised


@dataclass(frozen=True)
class Target:
    """Where the DDL runs: one node (``cluster`` None) or every node of a cluster."""

    cluster: str | None = None
    #: Keeper path of a replicated table; ``{shard}`` and ``{replica}`` are server macros
    replica_path: str = "/clickhouse/tables/{shard}/{database}/{table}"
    replica_name: str = "{replica}"

    @property
    def on_cluster(self) -> str:
        if not self.cluster:
            return ""
        plain = self.cluster.replace("_", "").isalnum() and not self.cluster[0].isdigit()
        # a plain name as is; anything else (a '{cluster}' macro, dashes) as a string
        return f" ON CLUSTER {self.cluster if plain else quote_string(self.cluster)}"


def quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _column(column: Column, width: int) -> str:
    return f"    {column.name.ljust(width)} {column.type} COMMENT {quote_string(column.comment)}"


def engine(table: Table, target: Target) -> str:
    """The ``ENGINE = ...`` clause."""
    args: list[str] = []
    if table.versioned:
        args.append("_version")
        if table.deleted:
            args.append(table.deleted)
    if target.cluster:
        path = target.replica_path.replace("{table}", table.name)
        replicated = [quote_string(path), quote_string(target.replica_name), *args]
        return f"ENGINE = ReplicatedReplacingMergeTree({', '.join(replicated)})"
    return (
        f"ENGINE = ReplacingMergeTree({', '.join(args)})" if args else "ENGINE = ReplacingMergeTree"
    )


def create_table(table: Table, target: Target, version: int | None = None) -> str:
    """``CREATE TABLE IF NOT EXISTS`` with the columns of migration ``version`` (all: None)."""
    columns = [c for c in table.definitions if version is None or table.column_since(c) <= version]
    width = max(len(c.name) for c in columns)
    lines = [f"CREATE TABLE IF NOT EXISTS {table.name}{target.on_cluster}", "("]
    lines.append(",\n".join(_column(c, width) for c in columns))
    lines.append(")")
    lines.append(engine(table, target))
    if table.partition_by:
        lines.append(f"PARTITION BY {table.partition_by}")
    lines.append(f"ORDER BY ({', '.join(table.key)})")
    if target.cluster:
        lines.append(
            f"SETTINGS replicated_deduplication_window = {DEDUP_BLOCKS}, "
            f"replicated_deduplication_window_seconds = {DEDUP_SECONDS}"
        )
    else:
        lines.append(f"SETTINGS non_replicated_deduplication_window = {DEDUP_BLOCKS}")
    comment = table.comment_at(version)
    if comment:
        lines.append(f"COMMENT {quote_string(comment)}")
    return "\n".join(lines)


def modify_comment(table: Table, target: Target) -> str:
    """``ALTER TABLE ... MODIFY COMMENT`` for a comment set after the table."""
    return (
        f"ALTER TABLE {table.name}{target.on_cluster} MODIFY COMMENT "
        f"{quote_string(table.comment or '')}"
    )


def add_column(table: Table, column: Column, target: Target) -> str:
    """``ALTER TABLE ... ADD COLUMN IF NOT EXISTS`` for a column added after the table."""
    names = [c.name for c in table.definitions]
    after = names[names.index(column.name) - 1]
    return (
        f"ALTER TABLE {table.name}{target.on_cluster} ADD COLUMN IF NOT EXISTS "
        f"{column.name} {column.type} COMMENT {quote_string(column.comment)} AFTER {after}"
    )


def create_view(
    table: Table, target: Target, version: int | None = None, replace: bool = False
) -> str:
    """The ``<table>_v`` view: every public column, one row per key (``FINAL``)."""
    columns = [
        c.name
        for c in table.definitions
        if c.name in table.view_columns and (version is None or table.column_since(c) <= version)
    ]
    head = "CREATE OR REPLACE VIEW" if replace else "CREATE VIEW IF NOT EXISTS"
    where = f"\nWHERE {table.view_where}" if table.view_where else ""
    return (
        f"{head} {table.view}{target.on_cluster} AS\n"
        f"SELECT {', '.join(columns)}\nFROM {table.name} FINAL{where}"
    )


def bookkeeping(target: Target) -> str:
    """The migration history table."""
    name = "sluice_schema_migrations"
    if target.cluster:
        path = quote_string(target.replica_path.replace("{table}", name))
        engine_clause = f"ReplicatedReplacingMergeTree({path}, {quote_string(target.replica_name)})"
    else:
        engine_clause = "ReplacingMergeTree"
    return (
        f"CREATE TABLE IF NOT EXISTS {name}{target.on_cluster}\n(\n"
        "    version    UInt32,\n"
        "    name       String,\n"
        "    checksum   String,\n"
        "    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)\n"
        f")\nENGINE = {engine_clause}\nORDER BY version"
    )
