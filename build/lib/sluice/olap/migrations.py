"""Versioned, idempotent migrations: ``NNN_name.sql`` files applied in order, once each.

Applied versions are recorded in ``sluice_schema_migrations``; a file whose checksum
changed after it was applied is an error (write a new migration instead).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from sluice.olap.client import OlapClient, OlapError

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS sluice_schema_migrations
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        """Split on ``;`` at line ends, dropping comment-only chunks."""
        out = []
        for chunk in re.split(r";\s*(?:\n|$)", self.sql):
            body = "\n".join(
                line for line in chunk.splitlines() if not line.strip().startswith("--")
            ).strip()
            if body:
                out.append(body)
        return out


def available() -> list[Migration]:
    """Every migration shipped with Sluice, in version order."""
    found = []
    for entry in resources.files("sluice.olap").joinpath("sql").iterdir():
        match = re.fullmatch(r"(\d+)_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def migrate(client: OlapClient) -> list[Migration]:
    """Apply the migrations not applied yet; return those applied now."""
    client.command(_BOOKKEEPING)
    _, rows = client.query("SELECT version, checksum FROM sluice_schema_migrations FINAL")
    done = {int(v): c for v, c in rows}
    applied = []
    for migration in available():
        if migration.version in done:
            if done[migration.version] != migration.checksum:
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
    return applied
