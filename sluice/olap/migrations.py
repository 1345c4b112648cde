"""Versioned, idempotent migrations, rendered from the catalog; one migrator at a time.

A migration is a version number and a name (:data:`VERSIONS`); its statements are what
the catalog says that version created: the tables whose ``since`` is the version (with
their views), and the columns added to older tables (``ALTER TABLE ... ADD COLUMN``, then
the view again). Applied versions are recorded in ``sluice_schema_migrations`` with the
checksum of their single-node rendering; a version whose rendering changed after it was
applied is an error (add a column with a new ``since`` instead of editing a released one).

Versions 1-3 were hand-written SQL files before the catalog rendered them; stores that
applied those files recorded the files' checksums, accepted here as long as the
rendering is still the one that replaced them (:data:`LEGACY`; a test pins both).

Two workers starting together must not migrate at once: :func:`migrate` holds a lock —
a table only one process can create (``CREATE TABLE`` without ``IF NOT EXISTS`` fails
for the second, on a server and through a cluster's DDL queue alike), holding who took
it and when. A lock older than :data:`LOCK_STALE_S` was left by a migrator that died and
is broken, with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from dataclasses import dataclass

from sluice.olap.catalog import OLAP_TABLES, Table
from sluice.olap.client import OlapClient, OlapError
from sluice.olap.ddl import (
    Target,
    add_column,
    bookkeeping,
    create_table,
    create_view,
    modify_comment,
    truncate,
)

log = logging.getLogger("sluice.olap.migrations")

#: every migration: version -> name (add the next one here, and ``since`` it in the catalog)
VERSIONS: dict[int, str] = {
    1: "campaign_analytics",
    2: "email_and_billing_analytics",
    3: "compliance_and_system_events",
    4: "campaign_analytics_comment",
    5: "rows_per_shard",
}

#: version -> (checksum of the hand-written file it was, checksum of its rendering)
LEGACY: dict[int, tuple[str, str]] = {
    1: (
        "0d03426fa276db5b100691031fd119dda1add35c75f6e625add45fca860c276f",
        "a446cbd488b320306574fde6f73dbcc014cce0170673d4dbd3ecd10c7cad24ec",
    ),
    2: (
        "d3751f0fff6ee6bb6d6443ac912c4e9526096ec64778281a68c543ddd312085b",
        "07220a550a5ed70e379454ce0777d32bba5dab7361a7c8da664e1ce986b3caed",
    ),
    3: (
        "fc94e00b34e7c94df9d71c121476c968c16664292853bd37a9500b5ec5384232",
        "3c40ef4eb6b40e3cb57c7741d2ab85e0aa34b3d5d76004145e70072ed243fbc3",
    ),
}

LOCK_TABLE = "sluice_migration_lock"
LOCK_STALE_S = 600.0  # a migration takes seconds; a lock this old was left by a dead one
LOCK_WAIT_S = 120.0


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    target: Target = Target()

    def statements(self, target: Target | None = None) -> list[str]:
        """The statements of this version, for ``target`` (default: this migration's)."""
        target = target or self.target
        out: list[str] = []
        for table in OLAP_TABLES.values():
            if table.since == self.version:
                out += [
                    create_table(table, target, self.version),
                    create_view(table, target, self.version),
                ]
                continue
            added = [
                c
                for c in table.definitions
                if table.since < self.version and table.column_since(c) == self.version
            ]
            if added:
                if any(c.name in table.key for c in added):
                    out.append(truncate(table, target))  # rows of the old key (the catalog)
                added.sort(key=lambda c: c.name not in table.key)  # the key column first
                out += [add_column(table, c, target, self.version) for c in added]
                out.append(create_view(table, target, self.version, replace=True))
            if table.since < self.version and table.comment_since == self.version:
                out.append(modify_comment(table, target))
        return out

    @property
    def sql(self) -> str:
        """The statements as one script (``;`` after each)."""
        return "".join(f"{statement};\n\n" for statement in self.statements())

    @property
    def checksum(self) -> str:
        """Of the single-node rendering: the same whichever target applies it."""
        return hashlib.sha256("\n;\n".join(self.statements(Target())).encode()).hexdigest()

    def accepts(self, recorded: str) -> bool:
        """Whether a recorded checksum is this version as it is rendered today."""
        if recorded == self.checksum:
            return True
        legacy = LEGACY.get(self.version)
        return legacy is not None and recorded == legacy[0] and legacy[1] == self.checksum


def available(target: Target | None = None) -> list[Migration]:
    """Every migration, in version order."""
    return [Migration(v, n, target or Target()) for v, n in sorted(VERSIONS.items())]


def tables_of(version: int) -> list[Table]:
    return [t for t in OLAP_TABLES.values() if t.since == version]


def _applied(client: OlapClient) -> dict[int, str] | None:
    """version -> recorded checksum, or None before the first migration."""
    _, exists = client.query("EXISTS TABLE sluice_schema_migrations")
    if not exists or not int(exists[0][0]):
        return None
    _, rows = client.query("SELECT version, checksum FROM sluice_schema_migrations FINAL")
    return {int(v): str(c) for v, c in rows}


def pending(client: OlapClient) -> list[Migration]:
    """The migrations this store has not applied (reads only: a worker's INSERT and
    SELECT grants suffice); raises if an applied one changed since."""
    done = _applied(client) or {}
    for migration in available():
        recorded = done.get(migration.version)
        if recorded is not None and not migration.accepts(recorded):
            raise OlapError(
                f"migration {migration.version}_{migration.name} changed after it was "
                "applied; add a new migration instead of editing it"
            )
    return [m for m in available() if m.version not in done]


def migrate(client: OlapClient, cluster: str | None = None) -> list[Migration]:
    """Apply the migrations not applied yet (under the migration lock); return them.

    A store that is up to date is only read, so a worker whose user may only INSERT and
    SELECT can call this at start-up; DDL needs a user with the grants in
    docs/operations.md (``sluice olap migrate``).
    """
    if not pending(client):
        return []
    target = Target(cluster)
    if cluster:
        _check_cluster(client, cluster)
    client.command(bookkeeping(target))
    with MigrationLock(client, target):
        done = _applied(client) or {}
        applied = []
        for migration in available(target):
            if migration.version in done:
                if not migration.accepts(done[migration.version]):
                    raise OlapError(
                        f"migration {migration.version}_{migration.name} changed after it was "
                        "applied; add a new migration instead of editing it"
                    )
                continue
            for statement in migration.statements():
                client.command(statement)
            client.insert(
                "sluice_schema_migrations",
                ["version", "name", "checksum"],
                [[migration.version, migration.name, migration.checksum]],
            )
            applied.append(migration)
            log.info("applied migration %03d_%s", migration.version, migration.name)
        return applied


def _check_cluster(client: OlapClient, cluster: str) -> None:
    _, rows = client.query(
        "SELECT count(DISTINCT shard_num) FROM system.clusters WHERE cluster = {c:String}",
        parameters={"c": cluster},
    )
    shards = int(rows[0][0]) if rows else 0
    if shards == 0:
        raise OlapError(f"ClickHouse knows no cluster {cluster!r} (CLICKHOUSE_CLUSTER)")
    if shards > 1:
        raise OlapError(
            f"cluster {cluster!r} has {shards} shards: Sluice's tables are replicated, not "
            "sharded (FINAL and insert deduplication need every row of a key on one shard); "
            "use a cluster of one shard with replicas (see docs/operations.md)"
        )


class MigrationLock:
    """The migration lock (see the module docstring), as a context manager."""

    def __init__(self, client: OlapClient, target: Target) -> None:
        self.client = client
        self.target = target
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"

    def _create(self) -> bool:
        engine = "ReplicatedMergeTree" if self.target.cluster else "MergeTree"
        if self.target.cluster:
            path = self.target.replica_path.replace("{table}", LOCK_TABLE)
            engine += f"('{path}', '{self.target.replica_name}')"
        try:
            self.client.command(
                f"CREATE TABLE {LOCK_TABLE}{self.target.on_cluster} "
                f"(owner String, acquired DateTime64(3, 'UTC')) ENGINE = {engine} ORDER BY tuple()"
            )
        except OlapError as exc:
            if "already exists" in str(exc).lower() or "TABLE_ALREADY_EXISTS" in str(exc):
                return False
            raise
        self.client.insert(LOCK_TABLE, ["owner", "acquired"], [[self.owner, _now()]])
        return True

    def _holder(self) -> tuple[str, float] | None:
        try:
            _, rows = self.client.query(
                f"SELECT owner, toUnixTimestamp64Milli(acquired) FROM {LOCK_TABLE} "
                "ORDER BY acquired LIMIT 1"
            )
        except OlapError:
            return None  # dropped meanwhile
        return (str(rows[0][0]), int(rows[0][1]) / 1000) if rows else ("?", time.time())

    def _drop(self) -> None:
        self.client.command(f"DROP TABLE IF EXISTS {LOCK_TABLE}{self.target.on_cluster} SYNC")

    def __enter__(self) -> MigrationLock:
        deadline = time.monotonic() + LOCK_WAIT_S
        while not self._create():
            holder = self._holder()
            if holder is not None and time.time() - holder[1] > LOCK_STALE_S:
                log.warning(
                    "breaking a stale migration lock of %s (taken %.0f s ago)",
                    holder[0],
                    time.time() - holder[1],
                )
                self._drop()
                continue
            if time.monotonic() > deadline:
                who = f"{holder[0]}, since {time.time() - holder[1]:.0f} s" if holder else "?"
                raise OlapError(
                    f"another process is migrating the OLAP store ({who}); if it died, the "
                    f"lock expires after {LOCK_STALE_S:.0f} s (or DROP TABLE {LOCK_TABLE})"
                )
            time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._drop()


def _now():  # noqa: ANN202 - a datetime
    from datetime import UTC, datetime

    return datetime.now(UTC)
