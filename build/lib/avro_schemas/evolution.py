"""Schema evolution rules, checked over a whole schema tree (``sluice schemas check``).

For every family of the taxonomy, ``<root>/<family>/v1.avsc, v2.avsc, ...`` must:

- parse with fastavro and with the ``avro`` package; be the family's record
  (``io.sluice.events.<Name>``); give every field a ``doc``;
- start with the envelope fields, in order, unchanged (DESIGN §2);
- keep the family's documented minimum fields with their types;
- give every other field a default, so a producer sending only the documented fields
  stays valid and old readers can read new writers;
- be FULL_TRANSITIVE compatible: every version's reader reads every earlier version's
  writer and every earlier reader reads it (checked with ``avro``'s
  ReaderWriterCompatibilityChecker);
- change the Parsing Canonical Form (else it would share the fingerprint of an earlier
  version and the single-object encoding could not tell them apart).

Pure functions; the CLI command only prints what :func:`check_tree` returns.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import avro.errors
import avro.schema
import fastavro
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from avro_schemas import ENVELOPE_FIELDS, NAMESPACE, RECORD_NAMES, REQUIRED_FIELDS, fingerprint
from topics.taxonomy import FAMILIES

_VERSION_FILE = re.compile(r"^v([1-9][0-9]*)\.avsc$")
_TIMESTAMP = {"type": "long", "logicalType": "timestamp-millis"}

#: The envelope, field by field: (type, has default null).
ENVELOPE_TYPES: dict[str, Any] = {
    "event_id": "string",
    "event_type": "string",
    "occurred_at": _TIMESTAMP,
    "tenant_id": "string",
    "source": "string",
    "user_id": ["null", "string"],
}

#: Documented optional minimum fields (DESIGN §2): nullable strings with default null.
OPTIONAL_MINIMUM: dict[str, tuple[str, ...]] = {
    "email": ("sequence_step_id", "bounce_type"),
    "warmup": ("folder",),
}


@dataclass(frozen=True)
class Problem:
    """One broken rule, in one version (``version`` None: about the family or tree)."""

    family: str
    version: int | None
    message: str

    def __str__(self) -> str:
        where = self.family if self.version is None else f"{self.family} v{self.version}"
        return f"{where}: {self.message}"


def list_versions(root: Path) -> dict[str, list[int]]:
    """``{family: [versions...]}`` of every family directory under ``root``."""
    out: dict[str, list[int]] = {}
    if not root.is_dir():
        return out
    for family_dir in sorted(p for p in root.iterdir() if _is_family_dir(p)):
        found = sorted(
            int(m.group(1)) for p in family_dir.iterdir() if (m := _VERSION_FILE.match(p.name))
        )
        out[family_dir.name] = found
    return out


def _is_family_dir(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith((".", "_"))


def check_tree(root: Path | str) -> list[Problem]:
    """Every problem of the schema tree under ``root`` (empty list: all good)."""
    root = Path(root)
    if not root.is_dir():
        return [Problem("*", None, f"{root} is not a directory")]
    problems: list[Problem] = []
    present = list_versions(root)
    for name in present:
        if name not in FAMILIES:
            problems.append(Problem(name, None, "directory is not a family of the taxonomy"))
    for family in FAMILIES:
        problems += check_family(root / family, family)
    return problems


def check_family(family_dir: Path, family: str) -> list[Problem]:
    """Every problem of one family's versions."""
    if not family_dir.is_dir():
        return [Problem(family, None, f"missing directory {family_dir}")]
    problems: list[Problem] = []
    for path in sorted(family_dir.iterdir()):
        if path.is_file() and path.suffix == ".avsc" and not _VERSION_FILE.match(path.name):
            problems.append(
                Problem(family, None, f"{path.name}: schema files must be named v<N>.avsc")
            )
    numbers = list_versions(family_dir.parent).get(family, [])
    if not numbers:
        return [*problems, Problem(family, None, "no schema versions (expected v1.avsc)")]
    if numbers != list(range(1, len(numbers) + 1)):
        problems.append(
            Problem(family, None, f"versions must be v1..vN without gaps, found {numbers}")
        )

    loaded: list[tuple[int, dict[str, Any], avro.schema.Schema, bytes]] = []
    for version in numbers:
        path = family_dir / f"v{version}.avsc"
        found, parsed = _check_file(path, family, version)
        problems += found
        if parsed is not None:
            loaded.append((version, *parsed))

    seen: dict[bytes, int] = {}
    for version, _raw, _schema, fp in loaded:
        if fp in seen:
            problems.append(
                Problem(
                    family,
                    version,
                    f"same Parsing Canonical Form as v{seen[fp]} (fingerprint {fp.hex()}): "
                    "a change of docs or defaults only must not become a new version",
                )
            )
        seen.setdefault(fp, version)

    checker = ReaderWriterCompatibilityChecker()
    for index, (new_version, new_raw, new_schema, _) in enumerate(loaded):
        for old_version, old_raw, old_schema, _ in loaded[:index]:
            for reader, reader_raw, writer, label in (
                (new_schema, new_raw, old_schema, f"v{new_version} cannot read data written with"),
                (old_schema, old_raw, new_schema, f"readers of v{old_version} cannot read data of"),
            ):
                result = checker.get_compatibility(reader, writer)
                if result.compatibility is not SchemaCompatibilityType.compatible:
                    other = old_version if reader is new_schema else new_version
                    details = (
                        "; ".join(
                            sorted(f"{m} (at {loc})" for m, loc in _pairs(result, reader_raw))
                        )
                        or "incompatible"
                    )
                    problems.append(Problem(family, new_version, f"{label} v{other}: {details}"))
    return problems


def _pairs(result: Any, reader_raw: dict[str, Any]) -> list[tuple[str, str]]:
    messages = sorted(str(m) for m in result.messages) or ["incompatible"]
    locations = (
        ", ".join(sorted(_where(loc, reader_raw) for loc in result.locations if loc != "/")) or "/"
    )
    return [(message, locations) for message in messages]


_FIELD_LOCATION = re.compile(r"^/fields/([0-9]+)(?=/|$)")


def _where(location: str, reader_raw: dict[str, Any]) -> str:
    """``/fields/18/type/1`` -> ``/fields/18/type/1 [field 'smtp_code']``: avro's locations
    index the reader's fields, which tells an operator little by itself."""
    match = _FIELD_LOCATION.match(location)
    fields = reader_raw.get("fields", [])
    if match and int(match.group(1)) < len(fields):
        return f"{location} [field {fields[int(match.group(1))].get('name')!r}]"
    return location


def _check_file(
    path: Path, family: str, version: int
) -> tuple[list[Problem], tuple[dict[str, Any], avro.schema.Schema, bytes] | None]:
    def problem(message: str) -> Problem:
        return Problem(family, version, message)

    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [problem(f"{path.name} is not valid JSON: {exc}")], None
    try:
        fastavro.parse_schema(raw)
    except Exception as exc:
        return [problem(f"fastavro cannot parse {path.name}: {exc}")], None
    try:
        schema = avro.schema.parse(text)
    except (avro.errors.AvroException, ValueError, TypeError) as exc:
        return [problem(f"avro cannot parse {path.name}: {exc}")], None

    problems: list[Problem] = []
    if not isinstance(raw, dict) or raw.get("type") != "record":
        return [problem("top level must be a record")], None
    expected_name = RECORD_NAMES.get(family)
    if raw.get("namespace") != NAMESPACE or raw.get("name") != expected_name:
        problems.append(
            problem(
                f"record must be {NAMESPACE}.{expected_name}, "
                f"is {raw.get('namespace')}.{raw.get('name')}"
            )
        )

    fields: list[dict[str, Any]] = raw.get("fields", [])
    by_name = {f["name"]: f for f in fields}
    names = [f["name"] for f in fields]
    if tuple(names[: len(ENVELOPE_FIELDS)]) != ENVELOPE_FIELDS:
        problems.append(
            problem(
                f"must start with the envelope fields {', '.join(ENVELOPE_FIELDS)} in this "
                f"order, starts with {', '.join(names[: len(ENVELOPE_FIELDS)])}"
            )
        )
    for name, type_ in ENVELOPE_TYPES.items():
        field = by_name.get(name)
        if field is None:
            problems.append(problem(f"envelope field {name!r} is missing"))
        elif field["type"] != type_:
            problems.append(
                problem(
                    f"envelope field {name!r} must have type {json.dumps(type_)}, "
                    f"has {json.dumps(field['type'])}"
                )
            )
    user_id = by_name.get("user_id")
    if user_id is not None and ("default" not in user_id or user_id["default"] is not None):
        problems.append(problem("envelope field 'user_id' must have default null"))

    for name in REQUIRED_FIELDS.get(family, ()):
        field = by_name.get(name)
        if field is None:
            problems.append(problem(f"documented field {name!r} is missing"))
        elif field["type"] != "string":
            problems.append(
                problem(
                    f'documented field {name!r} must have type "string", '
                    f"has {json.dumps(field['type'])}"
                )
            )
    optional_minimum = OPTIONAL_MINIMUM.get(family, ())
    for name in optional_minimum:
        field = by_name.get(name)
        if field is None:
            problems.append(problem(f"documented field {name!r} is missing"))
        elif field["type"] != ["null", "string"] or field.get("default", "") is not None:
            problems.append(
                problem(f'documented field {name!r} must be ["null", "string"] default null')
            )

    fixed = set(ENVELOPE_FIELDS) | set(REQUIRED_FIELDS.get(family, ()))
    for field in fields:
        name = field["name"]
        if name not in fixed and "default" not in field:
            problems.append(
                problem(
                    f"field {name!r} has no default: fields beyond the documented minimum "
                    'must be optional (e.g. ["null", ...] with default null)'
                )
            )
        if not str(field.get("doc", "")).strip():
            problems.append(problem(f"field {name!r} has no doc"))

    return problems, (raw, schema, fingerprint(raw))
