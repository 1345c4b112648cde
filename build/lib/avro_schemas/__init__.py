"""The Avro schemas of the event taxonomy: one record per family, every version kept.

Layout: ``avro_schemas/<family>/v<N>.avsc`` (``v1.avsc``, ``v2.avsc``, ...). The files ship
as package data, so the same code finds them in the source tree and when installed.

Fingerprints are CRC-64-AVRO of the Parsing Canonical Form, computed with fastavro, as
the 8 bytes the Avro single-object encoding puts after its ``C3 01`` marker (little
endian, like the Java implementation). The ``avro`` package computes a different
fingerprint for schemas with logical types (it keeps ``{"type": "long"}`` where the
canonical form wants ``"long"``), so fingerprints must only ever come from here.

Usage::

    from avro_schemas import latest, versions, fingerprint, lookup
    parsed = latest("email")
    family, version, parsed = lookup(fingerprint(parsed))
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import fastavro
from fastavro.schema import to_parsing_canonical_form

__all__ = [
    "ENVELOPE_FIELDS",
    "NAMESPACE",
    "RECORD_NAMES",
    "REQUIRED_FIELDS",
    "SCHEMA_DIR",
    "SchemaRepo",
    "SchemaVersion",
    "default_repo",
    "fingerprint",
    "latest",
    "lookup",
    "repo_for",
    "strip_logical_types",
    "versions",
]

SCHEMA_DIR: Path = Path(__file__).resolve().parent
"""The schema tree shipped with Sluice (this package's directory)."""

NAMESPACE = "io.sluice.events"

RECORD_NAMES: Mapping[str, str] = {
    "email": "EmailEvent",
    "warmup": "WarmupEvent",
    "security": "SecurityEvent",
    "infra": "InfraEvent",
    "system": "SystemEvent",
    "business": "BusinessEvent",
    "admin_ui": "AdminUiEvent",
    "admin_action": "AdminActionEvent",
}
"""Record name (in :data:`NAMESPACE`) of each family's schema."""

ENVELOPE_FIELDS: tuple[str, ...] = (
    "event_id",
    "event_type",
    "occurred_at",
    "tenant_id",
    "source",
    "user_id",
)
"""Fields every family starts with, in this order (DESIGN §2)."""

REQUIRED_FIELDS: Mapping[str, tuple[str, ...]] = {
    "email": ("email_id", "campaign_id", "mailbox_id", "lead_id"),
    "warmup": ("mailbox_id", "email_id"),
    "security": (),
    "infra": (),
    "system": (),
    "business": (),
    "admin_ui": (),
    "admin_action": (),
}
"""The documented minimum of each family beyond the envelope: required, non-empty strings.
Every other family field is optional with a default, so schemas can evolve."""

_VERSION_FILE = re.compile(r"^v([1-9][0-9]*)\.avsc$")


def fingerprint(schema: Mapping[str, Any] | str) -> bytes:
    """CRC-64-AVRO fingerprint of a schema's Parsing Canonical Form, 8 bytes little endian.

    ``schema`` may be a schema dict (raw or parsed by fastavro) or a JSON string.
    Docs, defaults and logical types do not change the fingerprint.
    """
    if isinstance(schema, str):
        schema = json.loads(schema)
    canonical = to_parsing_canonical_form(cast(dict[str, Any], schema))
    return bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))


def strip_logical_types(schema: Any) -> Any:
    """Return a deep copy of a (raw, unparsed) schema without ``logicalType`` keys.

    Reading with it returns timestamp-millis as plain int epoch ms, which is much cheaper
    than building a datetime per field per event. The canonical form (and so the
    fingerprint) is unchanged, since it ignores logical types.
    """
    if isinstance(schema, dict):
        return {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical_types(item) for item in schema]
    return copy.copy(schema)


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one family's schema."""

    family: str
    version: int
    path: Path
    raw: dict[str, Any] = field(repr=False)
    """The schema as written in the file (with docs and logical types)."""
    parsed: dict[str, Any] = field(repr=False)
    """``fastavro.parse_schema(raw)``."""
    wire: dict[str, Any] = field(repr=False)
    """Parsed schema without logical types: what the codec reads and writes with."""
    fingerprint: bytes

    @property
    def json(self) -> str:
        """The schema as a JSON string (what is registered in a schema registry)."""
        return json.dumps(self.raw, separators=(",", ":"))


class SchemaRepo:
    """Every version of every family's schema under one directory, parsed once.

    Raises ``ValueError`` naming the file when a schema does not parse; ``sluice schemas
    check`` (:func:`avro_schemas.evolution.check_tree`) reports the finer problems.
    """

    def __init__(self, root: Path | str = SCHEMA_DIR) -> None:
        self.root = Path(root)
        self._versions: dict[str, list[SchemaVersion]] = {}
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        for family_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            found: list[SchemaVersion] = []
            for path in family_dir.iterdir():
                match = _VERSION_FILE.match(path.name)
                if match:
                    found.append(_load(family_dir.name, int(match.group(1)), path))
            if found:
                found.sort(key=lambda sv: sv.version)
                self._versions[family_dir.name] = found
                for sv in found:
                    # A later version with the same canonical form (doc/default-only
                    # change) reads identically; the checker flags it, the latest wins.
                    self._by_fingerprint[sv.fingerprint] = sv

    def families(self) -> list[str]:
        """Families that have at least one schema version."""
        return list(self._versions)

    def schema_versions(self, family: str) -> list[SchemaVersion]:
        """All versions of a family, oldest first. ``KeyError`` for an unknown family."""
        try:
            return self._versions[family]
        except KeyError:
            raise KeyError(f"no Avro schema for family {family!r} under {self.root}") from None

    def versions(self, family: str) -> list[tuple[int, dict[str, Any]]]:
        """``[(version, parsed schema), ...]`` oldest first."""
        return [(sv.version, sv.parsed) for sv in self.schema_versions(family)]

    def latest_version(self, family: str) -> SchemaVersion:
        """The newest version of a family."""
        return self.schema_versions(family)[-1]

    def latest(self, family: str) -> dict[str, Any]:
        """The newest parsed schema of a family."""
        return self.latest_version(family).parsed

    def get(self, family: str, version: int) -> SchemaVersion:
        """One version of a family; ``KeyError`` when it does not exist."""
        for sv in self.schema_versions(family):
            if sv.version == version:
                return sv
        raise KeyError(f"no version {version} of family {family!r} under {self.root}")

    def by_fingerprint(self, fp: bytes) -> SchemaVersion | None:
        """The schema version with this fingerprint, or None."""
        return self._by_fingerprint.get(fp)

    def lookup(self, fp: bytes) -> tuple[str, int, dict[str, Any]] | None:
        """``(family, version, parsed schema)`` for a fingerprint, or None."""
        sv = self._by_fingerprint.get(fp)
        return None if sv is None else (sv.family, sv.version, sv.parsed)


def _load(family: str, version: int, path: Path) -> SchemaVersion:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        parsed = cast(dict[str, Any], fastavro.parse_schema(raw))
        wire = cast(dict[str, Any], fastavro.parse_schema(strip_logical_types(raw)))
        fp = fingerprint(parsed)
    except Exception as exc:  # JSON or Avro syntax: one message naming the file
        raise ValueError(f"{path}: not a valid Avro schema: {exc}") from exc
    return SchemaVersion(family, version, path, raw, parsed, wire, fp)


@lru_cache(maxsize=1)
def default_repo() -> SchemaRepo:
    """The shipped schema tree, loaded once per process."""
    return SchemaRepo(SCHEMA_DIR)


def repo_for(root: Path | str | None) -> SchemaRepo:
    """The schema tree under ``root`` (None: the shipped one), loaded once per process.

    Operators point ``SLUICE_SCHEMA_DIR`` at their own tree to ship new versions without
    a new Sluice release; the codec loads it through here.
    """
    if root is None or Path(root).resolve() == SCHEMA_DIR:
        return default_repo()
    return _repo_at(Path(root).resolve())


@lru_cache(maxsize=8)
def _repo_at(root: Path) -> SchemaRepo:
    return SchemaRepo(root)


def versions(family: str) -> list[tuple[int, dict[str, Any]]]:
    """``[(version, parsed schema), ...]`` of a family in the shipped tree, oldest first."""
    return default_repo().versions(family)


def latest(family: str) -> dict[str, Any]:
    """The newest parsed schema of a family in the shipped tree."""
    return default_repo().latest(family)


def lookup(fp: bytes) -> tuple[str, int, dict[str, Any]] | None:
    """``(family, version, parsed schema)`` for a fingerprint in the shipped tree, or None."""
    return default_repo().lookup(fp)
