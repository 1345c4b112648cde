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

from sluice.olap.catalog import Column, Merge, Table

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
    lines.append(f"ORDER BY ({', '.join(table.key_at(version))})")
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


def add_column(table: Table, column: Column, target: Target, version: int | None = None) -> str:
    """``ALTER TABLE ... ADD COLUMN IF NOT EXISTS`` for a column added after the table.

    A key column joins the end of ``ORDER BY`` in the same statement (ClickHouse only
    lets a sorting key grow by columns the same ``ALTER`` adds, without a default); the
    migration empties the table first (:func:`truncate`).
    """
    names = [c.name for c in table.definitions]
    after = names[names.index(column.name) - 1]
    statement = (
        f"ALTER TABLE {table.name}{target.on_cluster} ADD COLUMN IF NOT EXISTS "
        f"{column.name} {column.type} COMMENT {quote_string(column.comment)} AFTER {after}"
    )
    if column.name in table.key:
        statement += f", MODIFY ORDER BY ({', '.join(table.key_at(version))})"
    return statement


def truncate(table: Table, target: Target) -> str:
    """``TRUNCATE TABLE``: before a migration that adds a key column (see the catalog)."""
    return f"TRUNCATE TABLE IF EXISTS {table.name}{target.on_cluster}"


def create_view(
    table: Table, target: Target, version: int | None = None, replace: bool = False
) -> str:
    """The ``<table>_v`` view: every public column, one row per key (``FINAL``); for a
    sharded table, the shards' rows of a key combined into one (:func:`combined_select`)."""
    columns = [
        c
        for c in table.definitions
        if c.name in table.view_columns and (version is None or table.column_since(c) <= version)
    ]
    head = "CREATE OR REPLACE VIEW" if replace else "CREATE VIEW IF NOT EXISTS"
    where = f"\nWHERE {table.view_where}" if table.view_where else ""
    if table.sharded_at(version):
        body = combined_select(table, columns, where)
    else:
        body = f"SELECT {', '.join(c.name for c in columns)}\nFROM {table.name} FINAL{where}"
    return f"{head} {table.view}{target.on_cluster} AS\n{body}"


# How each Merge kind reads the shards' rows of one key (inner: aggregated per key) and
# what the view shows (outer: from the aggregated columns, qualified with ``r.``).
_INNER: dict[str, str] = {
    "sum": "sum({c})",
    "min": "min({c})",
    "max": "max({c})",
    "distinct": "toUInt64(length(groupUniqArrayArray({a0})))",
}


def combined_select(table: Table, columns: list[Column], where: str) -> str:
    """One row per view key from the rows of every shard (see :class:`Merge`).

    Two levels, because ClickHouse resolves a name to the select's own alias first: the
    inner query aggregates each column under its own name (sums, min/max, distinct
    unions), the outer one derives the columns computed *from* sums (status, ratios) and
    carries the plan columns forward from the latest month that has plan events
    (``ASOF LEFT JOIN`` on the key's last column). Every expression keeps the catalog's
    type whatever ``join_use_nulls`` the reading session has.
    """
    key = table.view_key
    merges = {c.name: table.merge_of(c) for c in columns if c.name not in key}
    inner = [*key]
    for name, merge in merges.items():
        if merge.kind in _INNER:
            first = merge.args[0] if merge.args else ""
            inner.append(f"{_INNER[merge.kind].format(c=name, a0=first)} AS {name}")
        elif merge.kind in ("first_positive", "ratio", "carry"):
            continue
        else:
            raise ValueError(f"{table.name}.{name}: unknown merge {merge.kind!r}")
    carried = [c for c in columns if merges.get(c.name, Merge("")).kind == "carry"]
    outer = []
    for c in columns:
        merge = merges.get(c.name)
        if merge is None or merge.kind in _INNER:
            expression = f"r.{c.name}"
            if c.name == "updated" and carried:
                expression = "greatest(r.updated, ifNull(p.updated, r.updated))"
        elif merge.kind == "first_positive":
            cases = ", ".join(f"r.{n} > 0, {quote_string(v)}" for n, v in merge.args)
            expression = f"CAST(multiIf({cases}, '') AS {c.type})"
        elif merge.kind == "ratio":
            num, den = merge.args
            expression = f"if(r.{den} = 0, NULL, r.{num} / r.{den})"
        else:  # carry
            expression = (
                f"p.{c.name}"
                if c.type.startswith("Nullable(")
                else f"ifNull(p.{c.name}, defaultValueOfTypeName({quote_string(c.type)}))"
            )
        outer.append(f"{expression} AS {c.name}")
    sql = (
        f"SELECT {', '.join(outer)}\nFROM (\n"
        f"    SELECT {', '.join(inner)}\n"
        f"    FROM {table.name} FINAL{where.replace(chr(10), chr(10) + '    ')}\n"
        f"    GROUP BY {', '.join(key)}\n) AS r"
    )
    if carried:
        markers = set().union(*(merges[c.name].args for c in carried))
        marker = " + ".join(sorted(markers, key=[c.name for c in table.definitions].index))
        picked = [*key, *(c.name for c in carried), "updated"]
        joined = " AND ".join(f"r.{k} = p.{k}" for k in key[:-1])
        sql += (
            f"\nASOF LEFT JOIN (\n    SELECT {', '.join(picked)}\n"
            f"    FROM {table.name} FINAL\n    WHERE {marker} > 0\n) AS p\n"
            f"ON {joined} AND r.{key[-1]} >= p.{key[-1]}"
        )
    return sql


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
