"""The wire format of Sluice events: validation, Avro encoding, and fast decoding.

Two framings, told apart by the first byte, both always accepted by :meth:`Codec.decode`
so producers can move from one to the other while consumers keep running:

``C3 01`` + 8-byte fingerprint + body
    Avro single-object encoding (the default). The fingerprint is CRC-64-AVRO of the
    writer schema's Parsing Canonical Form (see :mod:`avro_schemas`); the writer schema
    must be one of the versions kept under ``avro_schemas/`` (or ``SLUICE_SCHEMA_DIR``).
``00`` + 4-byte big-endian schema id + body
    Confluent Schema Registry framing, used by :meth:`Codec.encode` when a registry is
    configured (``SCHEMA_REGISTRY_URL``) or injected. Schemas are registered under the
    subject ``<topic>-value``. Decoding it needs a registry.

The body is schemaless Avro binary. Decoding resolves the writer schema (from the
fingerprint or schema id) against the reader schema, the newest version of the
family, so v1 and v2 writers can interleave on one topic. Timestamps come back as int
epoch milliseconds (UTC), never datetimes: reading with logical types costs a datetime
per field per event on the worker's hot path.

Errors::

    Exception
    ├── DecodeError          raw bytes that must not be processed (-> dead letters);
    │                        .reason is a stable code, .detail human text
    └── ValueError
        └── ValidationError  an event that must not be produced; names the field
    EncodeError              the schema registry failed while encoding

A message that passes :meth:`Codec.decode` is safe to process: it is well-formed Avro of
the right family, its event type is in the taxonomy and its required fields are non-empty.
"""

from __future__ import annotations

import difflib
import io
import json
import math
import re
import struct
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, cast

import fastavro
import fastavro.validation

from avro_schemas import (
    REQUIRED_FIELDS,
    SchemaRepo,
    SchemaVersion,
    fingerprint,
    repo_for,
    strip_logical_types,
)
from topics.catalog import Catalog, TopicSettings
from topics.taxonomy import EVENT_TYPES

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient


__all__ = [
    "ALLOWED_VALUES",
    "CONFLUENT_MAGIC",
    "Codec",
    "DecodeError",
    "EVENT_TIME_END_MS",
    "EVENT_TIME_MIN_MS",
    "EncodeError",
    "SINGLE_OBJECT_MAGIC",
    "ValidationError",
    "to_epoch_ms",
]

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"

# Stable DecodeError.reason codes (dead letters carry them in a header).
EMPTY = "empty"
BAD_MAGIC = "bad_magic"
UNKNOWN_SCHEMA = "unknown_schema"
WRONG_FAMILY = "wrong_family"
MALFORMED_AVRO = "malformed_avro"
REGISTRY_ERROR = "registry_error"
INVALID_EVENT = "invalid_event"
UNKNOWN_EVENT_TYPE = "unknown_event_type"

#: Values allowed in closed-vocabulary string fields, per family (checked on encode and decode).
ALLOWED_VALUES: Mapping[str, Mapping[str, frozenset[str]]] = {
    "email": {"bounce_type": frozenset({"hard", "soft"})},
    "warmup": {"folder": frozenset({"inbox", "spam", "other"})},
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_INT_STRING = re.compile(r"^-?[0-9]+$")
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
#: The event times Sluice takes: 1970-01-01 up to the end of 2149-06-06 UTC, the range of
#: ClickHouse's ``Date`` (a day number from 0 to 65535), which every rollup's day and month
#: columns use. A time outside it could never be written, and the checkpoint that held it
#: would fail again at every try; it goes to the dead letters (or is refused at encode).
EVENT_TIME_MIN_MS = 0
EVENT_TIME_END_MS = 65_536 * 86_400_000
_EVENT_TIMES = (
    "1970-01-01 to 2149-06-06 UTC (epoch ms 0 to 5662310399999: the days of ClickHouse's Date)"
)
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
# A schema id the registry did not know is asked again after this long (ids are
# immutable, but a new schema may reach a lagging registry replica later).
_UNKNOWN_ID_TTL_S = 60.0


class DecodeError(Exception):
    """Raw bytes that cannot be turned into a safe event.

    ``reason`` is one of ``empty``, ``bad_magic``, ``unknown_schema``, ``wrong_family``,
    ``malformed_avro``, ``registry_error``, ``invalid_event``, ``unknown_event_type``.
    Only ``registry_error`` is transient (the registry was unreachable or not configured):
    retrying later can succeed; every other reason is a property of the bytes.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ValidationError(ValueError):
    """An event that does not satisfy its family's schema or the taxonomy.

    ``field`` names the offending field (None when it is about the whole event);
    ``reason`` is ``invalid_event`` or ``unknown_event_type``.
    """

    def __init__(self, message: str, *, field: str | None = None, reason: str = INVALID_EVENT):
        super().__init__(message)
        self.field = field
        self.reason = reason


class EncodeError(Exception):
    """Encoding failed for a reason outside the event (the schema registry)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- timestamps


def to_epoch_ms(value: Any) -> int:
    """Normalize a timestamp to int epoch milliseconds, UTC.

    Accepts int/float epoch ms, a datetime (naive means UTC) or an ISO-8601 string
    (``Z`` or an offset; naive means UTC; a string of digits is epoch ms).
    Raises ``TypeError``/``ValueError`` otherwise.
    """
    if isinstance(value, bool):
        raise TypeError("a boolean is not a timestamp")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a timestamp")
        return math.floor(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - _EPOCH) // _MS
    if isinstance(value, str):
        text = value.strip()
        if _INT_STRING.match(text):
            return int(text)
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"{value!r} is neither ISO-8601 (e.g. 2025-01-31T12:00:00Z) nor epoch ms"
            ) from None
        return to_epoch_ms(parsed)
    raise TypeError(f"{type(value).__name__} is not a timestamp (epoch ms, datetime or ISO-8601)")


# --------------------------------------------------------------------------- validation


class _FieldSpec:
    """How to validate and normalize one field, derived from the schema once."""

    __slots__ = ("name", "kind", "nullable", "has_default", "default", "type_schema", "required")

    def __init__(self, field: Mapping[str, Any]) -> None:
        self.name: str = field["name"]
        type_schema = field["type"]
        self.nullable = False
        if isinstance(type_schema, list):
            branches = [b for b in type_schema if b != "null"]
            self.nullable = len(branches) < len(type_schema)
            if len(branches) == 1:
                type_schema = branches[0]
        # Values are written with the schema minus logical types (see avro_schemas).
        self.type_schema = strip_logical_types(type_schema)
        self.kind = _kind(type_schema)
        self.has_default = "default" in field
        self.default = field.get("default")
        # Required = no way to leave it out. Required strings must also be non-empty.
        self.required = not self.nullable and not self.has_default


def _kind(type_schema: Any) -> str:
    if isinstance(type_schema, str):
        return type_schema if type_schema in _SCALAR_CHECKS else "other"
    if isinstance(type_schema, dict):
        base = type_schema.get("type")
        logical = type_schema.get("logicalType")
        if base == "long" and logical == "timestamp-millis":
            return "timestamp"
        if logical is None and isinstance(base, str) and base in _SCALAR_CHECKS:
            return base
        if base == "array" and type_schema.get("items") == "string":
            return "string_array"
        if base == "map" and type_schema.get("values") == "string":
            return "string_map"
    return "other"


def _check_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise TypeError(f"expected a string, got {type(value).__name__}")


def _integer(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool):
            raise TypeError("expected an integer, got a boolean")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise TypeError(f"expected an integer, got {type(value).__name__}")
        if not lo <= value <= hi:
            raise ValueError(f"{value} is out of range [{lo}, {hi}]")
        return value

    return check


def _check_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _check_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError(f"expected true or false, got {type(value).__name__}")


def _check_timestamp(value: Any) -> int:
    ms = to_epoch_ms(value)
    if not EVENT_TIME_MIN_MS <= ms < EVENT_TIME_END_MS:
        raise ValueError(f"{value!r} is outside {_EVENT_TIMES}")
    return ms


def _check_string_array(value: Any) -> list[str]:
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise TypeError(f"expected a list of strings, got {type(value).__name__}")
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"expected a list of strings, found {type(item).__name__}")
    return list(value)


def _map_value(value: Any) -> str:
    # A before/after summary naturally holds numbers and flags: keep them, as text.
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise TypeError(f"map values must be strings (or numbers/booleans), got {type(value).__name__}")


def _check_string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected an object of strings, got {type(value).__name__}")
    out = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise TypeError(f"map keys must be strings, got {type(key).__name__}")
        out[key] = _map_value(item)
    return out


_SCALAR_CHECKS: dict[str, Callable[[Any], Any]] = {
    "string": _check_string,
    "int": _integer(_INT_MIN, _INT_MAX),
    "long": _integer(_LONG_MIN, _LONG_MAX),
    "float": _check_float,
    "double": _check_float,
    "boolean": _check_boolean,
}
_CHECKS: dict[str, Callable[[Any], Any]] = {
    **_SCALAR_CHECKS,
    "timestamp": _check_timestamp,
    "string_array": _check_string_array,
    "string_map": _check_string_map,
}


class _Validator:
    """Validates events against one schema version of one family."""

    def __init__(self, sv: SchemaVersion) -> None:
        self.family = sv.family
        self.event_types = EVENT_TYPES.get(sv.family, frozenset())
        self.fields = [_FieldSpec(f) for f in sv.raw["fields"]]
        self.names = frozenset(spec.name for spec in self.fields)
        self.allowed = ALLOWED_VALUES.get(sv.family, {})

    def _fail(
        self, message: str, field: str | None, reason: str = INVALID_EVENT
    ) -> ValidationError:
        return ValidationError(f"{self.family} event: {message}", field=field, reason=reason)

    def __call__(self, event: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(event, Mapping):
            raise self._fail(f"expected a mapping, got {type(event).__name__}", None)
        unknown = [key for key in event if key not in self.names]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), self.names, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise self._fail(
                f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(hints)}",
                str(unknown[0]),
            )
        out: dict[str, Any] = {}
        for spec in self.fields:
            value = event.get(spec.name)
            if value is None:
                if spec.nullable:
                    out[spec.name] = None
                elif spec.has_default:
                    out[spec.name] = spec.default
                else:
                    raise self._fail(f"missing required field {spec.name!r}", spec.name)
                continue
            check = _CHECKS.get(spec.kind)
            try:
                if check is None:
                    fastavro.validation.validate(value, spec.type_schema, raise_errors=True)
                    out[spec.name] = value
                else:
                    out[spec.name] = check(value)
            except (TypeError, ValueError, fastavro.validation.ValidationError) as exc:
                raise self._fail(f"field {spec.name!r}: {exc}", spec.name) from None
            if spec.required and spec.kind == "string" and not out[spec.name].strip():
                raise self._fail(f"field {spec.name!r} must be a non-empty string", spec.name)
        try:
            out["event_id"] = str(uuid.UUID(out["event_id"]))
        except ValueError:
            raise self._fail(
                f"field 'event_id' must be a UUID string, got {out['event_id']!r}", "event_id"
            ) from None
        if out["event_type"] not in self.event_types:
            raise self._fail(
                f"event_type {out['event_type']!r} is not a {self.family} event type "
                f"(one of: {', '.join(sorted(self.event_types))})",
                "event_type",
                UNKNOWN_EVENT_TYPE,
            )
        for name, allowed in self.allowed.items():
            value = out.get(name)
            if value is not None and value not in allowed:
                raise self._fail(
                    f"field {name!r} must be one of {', '.join(sorted(allowed))}, got {value!r}",
                    name,
                )
        return out


# --------------------------------------------------------------------------- compiled reader


class _Unsupported(Exception):
    """The schema uses something the compiled reader does not do (fastavro reads it)."""


_MAX_VARINT_BYTES = 10
_MAX_EMPTY_ITEMS = 1_000_000  # block count cap for items that take zero bytes (null)
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    """Zig-zag varint at ``pos``: (value, next position)."""
    b = data[pos]
    pos += 1
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        if shift >= 7 * _MAX_VARINT_BYTES:
            raise ValueError("varint longer than 10 bytes")
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
    if n > 0xFFFF_FFFF_FFFF_FFFF:
        raise ValueError("varint overflows 64 bits")
    return (n >> 1) ^ -(n & 1), pos


class _ReaderCompiler:
    """Turns a (parsed, logical-type-free) record schema into Python source that reads the
    schemaless binary body straight from ``bytes`` by index.

    fastavro's Cython reader calls ``fo.read(1)`` per varint byte and dispatches on the
    schema per field; straight-line code specialised to one schema reads an email event
    about twice as fast. Every read is bounds-checked (an index past the end raises
    IndexError, slices are checked explicitly), so truncated or garbage bodies raise.
    Resolution against a different reader schema is not compiled: see :class:`_ReadPlan`.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {"_read_long": _read_long}
        self.named: dict[str, Any] = {}  # full name -> record function name or definition
        self.in_progress: set[str] = set()
        self.counter = 0

    def _fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def compile(self, schema: Mapping[str, Any]) -> Callable[[bytes, int], tuple[dict, int]]:
        if not isinstance(schema, Mapping) or schema.get("type") not in ("record", "error"):
            raise _Unsupported("top level is not a record")
        entry = self._record(schema)
        namespace = dict(self.consts)
        exec(compile("\n".join(self.lines), "<sluice compiled avro reader>", "exec"), namespace)
        return namespace[entry]

    def _record(self, schema: Mapping[str, Any]) -> str:
        name = schema.get("name", "")
        if name in self.in_progress:
            raise _Unsupported(f"recursive record {name}")
        self.in_progress.add(name)
        fn = self._fresh("_record")
        self.named[name] = fn
        body = ["    size = len(data)", "    r = {}"]
        for field in schema["fields"]:
            body += self._value(field["type"], f"r[{field['name']!r}]", "    ")
        body.append("    return r, pos")
        self.lines += [f"def {fn}(data, pos):", *body, ""]
        self.in_progress.discard(name)
        return fn

    def _long_into(self, dest: str, ind: str) -> list[str]:
        return [
            f"{ind}b = data[pos]",
            f"{ind}if b < 128:",
            f"{ind}    pos += 1",
            f"{ind}    {dest} = (b >> 1) ^ -(b & 1)",
            f"{ind}else:",
            f"{ind}    {dest}, pos = _read_long(data, pos)",
        ]

    def _sized(self, dest: str, ind: str, decode: bool) -> list[str]:
        n, end = self._fresh("n"), self._fresh("e")
        return [
            *self._long_into(n, ind),
            f"{ind}{end} = pos + {n}",
            f"{ind}if {n} < 0 or {end} > size:",
            f"{ind}    raise EOFError('length past the end')",
            f"{ind}{dest} = data[pos:{end}]{'.decode()' if decode else ''}",
            f"{ind}pos = {end}",
        ]

    def _value(self, schema: Any, dest: str, ind: str) -> list[str]:
        if isinstance(schema, list):
            return self._union(schema, dest, ind)
        if isinstance(schema, Mapping):
            kind = schema.get("type")
            if not isinstance(kind, str):
                raise _Unsupported(f"type {kind!r}")
            if kind in _PRIMITIVES:
                return self._value(kind, dest, ind)
            if kind in ("record", "error"):
                return [f"{ind}{dest}, pos = {self._record(schema)}(data, pos)"]
            if kind == "enum":
                self.named[schema["name"]] = schema
                return self._enum(schema, dest, ind)
            if kind == "fixed":
                self.named[schema["name"]] = schema
                return self._fixed(schema, dest, ind)
            if kind == "array":
                return self._blocks(schema["items"], None, dest, ind)
            if kind == "map":
                return self._blocks(schema["values"], True, dest, ind)
            raise _Unsupported(f"type {kind!r}")
        if not isinstance(schema, str):
            raise _Unsupported(f"schema {schema!r}")
        if schema == "null":
            return [f"{ind}{dest} = None"]
        if schema == "boolean":
            return [f"{ind}{dest} = data[pos] != 0", f"{ind}pos += 1"]
        if schema in ("int", "long"):
            return self._long_into(dest, ind)
        if schema in ("float", "double"):
            width, fmt = (4, "<f") if schema == "float" else (8, "<d")
            unpack = f"_unpack_{schema}"
            self.consts[unpack] = struct.Struct(fmt).unpack_from
            return [f"{ind}{dest} = {unpack}(data, pos)[0]", f"{ind}pos += {width}"]
        if schema in ("bytes", "string"):
            return self._sized(dest, ind, decode=schema == "string")
        named = self.named.get(schema)
        if isinstance(named, str):  # a record defined earlier
            if schema in self.in_progress:
                raise _Unsupported(f"recursive record {schema}")
            return [f"{ind}{dest}, pos = {named}(data, pos)"]
        if isinstance(named, Mapping):
            return (
                self._enum(named, dest, ind)
                if named["type"] == "enum"
                else self._fixed(named, dest, ind)
            )
        raise _Unsupported(f"unknown named type {schema!r}")

    def _enum(self, schema: Mapping[str, Any], dest: str, ind: str) -> list[str]:
        symbols = self._fresh("_symbols")
        self.consts[symbols] = tuple(schema["symbols"])
        index = self._fresh("k")
        return [
            *self._long_into(index, ind),
            f"{ind}if {index} < 0:",
            f"{ind}    raise IndexError('negative enum index')",
            f"{ind}{dest} = {symbols}[{index}]",
        ]

    def _fixed(self, schema: Mapping[str, Any], dest: str, ind: str) -> list[str]:
        width = schema["size"]
        if not isinstance(width, int) or width < 0:
            raise _Unsupported("fixed size")
        return [
            f"{ind}if pos + {width} > size:",
            f"{ind}    raise EOFError('fixed past the end')",
            f"{ind}{dest} = data[pos:pos + {width}]",
            f"{ind}pos += {width}",
        ]

    def _union(self, branches: list[Any], dest: str, ind: str) -> list[str]:
        # Compare the still zig-zag-encoded index (branch k is 2k): one byte, no arithmetic.
        index = self._fresh("u")
        lines = [
            f"{ind}{index} = data[pos]",
            f"{ind}if {index} < 128:",
            f"{ind}    pos += 1",
            f"{ind}else:",
            f"{ind}    {index}, pos = _read_long(data, pos)",
            f"{ind}    {index} = 2 * {index} if {index} >= 0 else -1",
        ]
        for number, branch in enumerate(branches):
            lines.append(f"{ind}{'if' if number == 0 else 'elif'} {index} == {2 * number}:")
            lines += self._value(branch, dest, ind + "    ")
        lines += [f"{ind}else:", f"{ind}    raise IndexError('union index out of range')"]
        return lines

    def _blocks(self, item: Any, is_map: bool | None, dest: str, ind: str) -> list[str]:
        out, count, skip, item_var, key = (
            self._fresh("out"),
            self._fresh("c"),
            self._fresh("s"),
            self._fresh("x"),
            self._fresh("key"),
        )
        # Every item takes at least one byte unless it is null: then a block count larger
        # than the bytes left is garbage (and would otherwise loop ~forever).
        limit = "size - pos" if (is_map or self._never_empty(item)) else str(_MAX_EMPTY_ITEMS)
        lines = [
            f"{ind}{out} = {{}}" if is_map else f"{ind}{out} = []",
            f"{ind}while True:",
            *self._long_into(count, ind + "    "),
            f"{ind}    if {count} == 0:",
            f"{ind}        break",
            f"{ind}    if {count} < 0:",
            f"{ind}        {count} = -{count}",
            *self._long_into(skip, ind + "        "),
            f"{ind}    if {count} > {limit}:",
            f"{ind}        raise EOFError('block count past the end')",
            f"{ind}    for _ in range({count}):",
        ]
        inner = ind + "        "
        if is_map:
            lines += self._sized(key, inner, decode=True)
            lines += self._value(item, f"{out}[{key}]", inner)
        else:
            lines += self._value(item, item_var, inner)
            lines.append(f"{inner}{out}.append({item_var})")
        lines.append(f"{ind}{dest} = {out}")
        return lines

    def _never_empty(self, item: Any) -> bool:
        """True when every value of this schema takes at least one byte."""
        if isinstance(item, list):
            return True  # the branch index
        if isinstance(item, Mapping):
            kind = item.get("type")
            if kind == "fixed":
                return isinstance(item.get("size"), int) and item["size"] > 0
            return kind in ("enum", "array", "map") or (kind in _PRIMITIVES and kind != "null")
        if item in _PRIMITIVES:
            return item != "null"
        named = self.named.get(item)
        return isinstance(named, Mapping) and self._never_empty(named)


def _compile_reader(schema: Mapping[str, Any]) -> Callable[[bytes, int], tuple[dict, int]] | None:
    """A compiled reader for a parsed record schema, or None when fastavro must read it."""
    try:
        return _ReaderCompiler().compile(schema)
    except Exception:  # _Unsupported, or a schema shape we did not foresee
        return None


# --------------------------------------------------------------------------- decoding


class _ReadPlan:
    """How to read bodies of one writer schema as one family (cached per pair).

    Avro resolution costs about twice a plain read, so when the reader differs from the
    writer only by added fields (with plain defaults) and/or removed fields, the body is
    read with the writer schema (by the compiled reader when it can) and the dict is
    patched in place. Anything else (type promotion, aliases, changed nested types) is
    left to fastavro's resolution.
    """

    __slots__ = ("writer", "reader", "fast", "add", "drop", "checks")

    def __init__(
        self,
        writer: SchemaVersion | dict[str, Any],
        reader: SchemaVersion,
        checks: _Checks,
        compiled: bool,
    ) -> None:
        self.checks = checks
        writer_wire = writer.wire if isinstance(writer, SchemaVersion) else writer
        writer_fp = writer.fingerprint if isinstance(writer, SchemaVersion) else None
        self.writer = writer_wire
        self.reader: dict[str, Any] | None = None
        self.fast: Callable[[bytes, int], tuple[dict, int]] | None = None
        self.add: tuple[tuple[str, Any], ...] = ()
        self.drop: tuple[str, ...] = ()
        if writer_fp != reader.fingerprint:
            patch = _patch_plan(writer_wire, reader.raw)
            if patch is None:
                self.reader = reader.wire
                return
            self.add, self.drop = patch
        if compiled:
            self.fast = _compile_reader(writer_wire)


_PLAIN_DEFAULT = (type(None), str, int, float, bool)


def _patch_plan(
    writer: Mapping[str, Any], reader: Mapping[str, Any]
) -> tuple[tuple[tuple[str, Any], ...], tuple[str, ...]] | None:
    writer_fields = {f["name"]: f for f in writer["fields"]}
    reader_fields = {f["name"]: f for f in reader["fields"]}
    add = []
    for name, field in reader_fields.items():
        if field.get("aliases"):
            return None
        if name in writer_fields:
            if _canonical_type(field["type"]) != _canonical_type(writer_fields[name]["type"]):
                return None
            continue
        if "default" not in field or not isinstance(field["default"], _PLAIN_DEFAULT):
            return None
        first = field["type"][0] if isinstance(field["type"], list) else field["type"]
        if _canonical_type(first) in ('"bytes"', '"fixed"') or (
            isinstance(first, dict) and first.get("type") in ("bytes", "fixed", "enum")
        ):
            return None
        default = field["default"]
        if _canonical_type(first) in ('"float"', '"double"') and isinstance(default, int):
            default = float(default)  # what Avro resolution would return
        add.append((name, default))
    drop = tuple(name for name in writer_fields if name not in reader_fields)
    return tuple(add), drop


def _canonical_type(type_schema: Any) -> str:
    try:
        return fastavro.schema.to_parsing_canonical_form(type_schema)
    except Exception:  # named references etc.: compare literally, never patch wrongly
        return json.dumps(strip_logical_types(type_schema), sort_keys=True) + "#raw"


class _Checks:
    """The cheap checks decode runs on every event of a family (``reader``: its newest
    schema, whose timestamp fields are checked against :data:`EVENT_TIME_MIN_MS` ..
    :data:`EVENT_TIME_END_MS`)."""

    __slots__ = ("event_types", "required", "allowed", "times")

    def __init__(self, family: str, reader: SchemaVersion) -> None:
        self.event_types = EVENT_TYPES.get(family, frozenset())
        self.required = ("event_id", "tenant_id", "source", *REQUIRED_FIELDS.get(family, ()))
        self.allowed = tuple(ALLOWED_VALUES.get(family, {}).items())
        self.times = tuple(
            spec.name for spec in map(_FieldSpec, reader.raw["fields"]) if spec.kind == "timestamp"
        )


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def topic_subjects(catalog: Catalog) -> Callable[[str], str]:
    """Registry subjects by the topic-name strategy: ``<topic>-value``."""
    return lambda family: f"{catalog.for_family(family).name}-value"


class CodecSettings(TopicSettings, Protocol):
    """What the codec reads from settings (duck-typed: this package imports no settings)."""

    @property
    def sluice_schema_dir(self) -> str | None: ...

    @property
    def schema_registry_url(self) -> str | None: ...


class Codec:
    """Encode, decode and validate taxonomy events.

    ``schemas`` defaults to the tree under ``settings.sluice_schema_dir``
    (``SLUICE_SCHEMA_DIR``), else the shipped one. A schema registry is used for
    encoding when ``registry`` is given, or else when ``settings.schema_registry_url``
    is set. ``settings`` is any object with the fields of :class:`CodecSettings` (a
    :class:`sluice.settings.Settings` is one); without it the codec uses the shipped
    schemas and no registry. ``subject_for`` maps a family to its registry subject
    (default ``<topic>-value`` from the topic catalog).
    ``compiled=False`` reads every body with fastavro instead of the compiled reader
    (same results, about half the speed; for tests and debugging).

    Thread-safety: caches are plain dicts filled idempotently; one codec may be shared.
    """

    def __init__(
        self,
        schemas: SchemaRepo | None = None,
        *,
        registry: SchemaRegistryClient | None = None,
        settings: CodecSettings | None = None,
        subject_for: Callable[[str], str] | None = None,
        compiled: bool = True,
    ) -> None:
        if schemas is None:
            schemas = repo_for(settings.sluice_schema_dir if settings is not None else None)
        self.schemas = schemas
        if registry is None and settings is not None and settings.schema_registry_url:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            # new_client also understands mock:// URLs (an in-process registry).
            registry = SchemaRegistryClient.new_client({"url": settings.schema_registry_url})
        self.registry = registry
        catalog = Catalog.from_settings(settings) if settings is not None else Catalog()
        self.subject_for = subject_for or topic_subjects(catalog)
        self.compiled = compiled
        self._validators: dict[tuple[str, int], _Validator] = {}
        self._plans: dict[tuple[bytes, str], _ReadPlan] = {}  # (fingerprint, family)
        self._sr_plans: dict[tuple[int, str], _ReadPlan] = {}  # (schema id, family)
        self._sr_writers: dict[int, SchemaVersion | dict[str, Any]] = {}
        self._sr_unknown: dict[int, float] = {}  # schema id -> monotonic time of the 404
        self._sr_ids: dict[tuple[str, int], int] = {}  # (family, version) -> schema id

    @property
    def framing(self) -> str:
        """``"confluent"`` when encoding for a schema registry, else ``"single_object"``."""
        return "confluent" if self.registry is not None else "single_object"

    # ------------------------------------------------------------------ validate/encode

    def _version(self, family: str, version: int | None) -> SchemaVersion:
        try:
            if version is None:
                return self.schemas.latest_version(family)
            return self.schemas.get(family, version)
        except KeyError as exc:
            raise ValidationError(str(exc.args[0]), reason=INVALID_EVENT) from None

    def _validator(self, sv: SchemaVersion) -> _Validator:
        key = (sv.family, sv.version)
        validator = self._validators.get(key)
        if validator is None:
            validator = self._validators[key] = _Validator(sv)
        return validator

    def validate(
        self, family: str, event: Mapping[str, Any], *, version: int | None = None
    ) -> dict[str, Any]:
        """Check an event and return it normalized: every schema field present (defaults
        filled), timestamps as int epoch ms, ``event_id`` in canonical UUID form.

        ``version`` selects the schema version (default: the newest).
        Raises :class:`ValidationError` naming the first bad field.
        """
        return self._validator(self._version(family, version))(event)

    def encode(self, family: str, event: Mapping[str, Any], *, version: int | None = None) -> bytes:
        """Validate an event and return its wire bytes (framing per :attr:`framing`)."""
        sv = self._version(family, version)
        record = self._validator(sv)(event)
        header = (
            SINGLE_OBJECT_MAGIC + sv.fingerprint
            if self.registry is None
            else CONFLUENT_MAGIC + self._schema_id(sv).to_bytes(4, "big")
        )
        buf = io.BytesIO()
        buf.write(header)
        fastavro.schemaless_writer(buf, sv.wire, record)
        return buf.getvalue()

    def _schema_id(self, sv: SchemaVersion) -> int:
        key = (sv.family, sv.version)
        schema_id = self._sr_ids.get(key)
        if schema_id is not None:
            return schema_id
        from confluent_kafka.schema_registry import Schema, SchemaRegistryError

        assert self.registry is not None
        subject = self.subject_for(sv.family)
        schema = Schema(sv.json, "AVRO")
        try:
            schema_id = self.registry.register_schema(subject, schema)
        except SchemaRegistryError as register_exc:
            # Registries often forbid auto-registration (403): the schema may exist.
            try:
                schema_id = self.registry.lookup_schema(subject, schema).schema_id
            except Exception:
                raise EncodeError(
                    REGISTRY_ERROR,
                    f"cannot register or find {sv.family} v{sv.version} under subject "
                    f"{subject!r}: {register_exc}",
                ) from register_exc
        except Exception as exc:  # connection errors and the like
            raise EncodeError(
                REGISTRY_ERROR, f"schema registry unreachable for subject {subject!r}: {exc}"
            ) from exc
        if schema_id is None:
            raise EncodeError(REGISTRY_ERROR, f"registry returned no id for subject {subject!r}")
        self._sr_ids[key] = schema_id
        self._sr_writers.setdefault(schema_id, sv)
        return schema_id

    # ------------------------------------------------------------------ decode

    def decode(self, raw: bytes, family: str) -> dict[str, Any]:
        """Decode one message of ``family`` (either framing) into a dict.

        The dict has every field of the family's newest schema; timestamps are int epoch
        ms. Raises :class:`DecodeError` for anything that is not a safe event of ``family``.
        """
        if not raw:
            raise DecodeError(EMPTY, "empty message (no bytes)")
        if type(raw) is not bytes:
            raw = bytes(raw)
        first = raw[0]
        if first == 0xC3:
            if len(raw) < 2 or raw[1] != 0x01:
                raise DecodeError(BAD_MAGIC, f"unknown single-object marker {raw[:2].hex()}")
            if len(raw) < 10:
                raise DecodeError(MALFORMED_AVRO, f"message too short ({len(raw)} bytes)")
            fp = raw[2:10]
            plan = self._plans.get((fp, family))
            if plan is None:
                plan = self._plan_for_fingerprint(fp, family)
            start = 10
        elif first == 0x00:
            if len(raw) < 5:
                raise DecodeError(MALFORMED_AVRO, f"message too short ({len(raw)} bytes)")
            schema_id = int.from_bytes(raw[1:5], "big")
            plan = self._sr_plans.get((schema_id, family))
            if plan is None:
                plan = self._plan_for_schema_id(schema_id, family)
            start = 5
        else:
            raise DecodeError(
                BAD_MAGIC,
                f"first byte 0x{first:02x} is neither Avro single-object (0xc3) "
                "nor Confluent (0x00) framing",
            )

        end = len(raw)
        fast = plan.fast
        if fast is not None:
            try:
                record, pos = fast(raw, start)
            except Exception as exc:  # IndexError/EOFError past the end, bad UTF-8, ...
                raise DecodeError(
                    MALFORMED_AVRO, f"body does not decode as {family}: {_describe(exc)}"
                ) from None
            if pos != end:
                raise DecodeError(MALFORMED_AVRO, f"{end - pos} trailing bytes after the body")
        else:
            # One sentinel byte after the message: fastavro does not check that a string's
            # bytes are all there, so a body cut inside its last string would otherwise
            # read "fine". Any read past the end consumes the sentinel: tell() > end.
            buf = io.BytesIO(raw + b"\x00")
            buf.seek(start)
            try:
                record = cast(
                    dict[str, Any], fastavro.schemaless_reader(buf, plan.writer, plan.reader)
                )
            except Exception as exc:  # StopIteration, IndexError, ReadError, ...
                raise DecodeError(
                    MALFORMED_AVRO, f"body does not decode as {family}: {_describe(exc)}"
                ) from None
            if buf.tell() != end:
                raise DecodeError(
                    MALFORMED_AVRO,
                    "truncated body"
                    if buf.tell() > end
                    else f"{end - buf.tell()} trailing bytes after the body",
                )
        for name, default in plan.add:
            record[name] = default
        for name in plan.drop:
            del record[name]

        checks = plan.checks
        if record["event_type"] not in checks.event_types:
            raise DecodeError(
                UNKNOWN_EVENT_TYPE,
                f"event_type {record['event_type']!r} is not a {family} event type",
            )
        for name in checks.required:
            if not record[name]:
                raise DecodeError(INVALID_EVENT, f"{family} event has an empty {name}")
        for name, allowed in checks.allowed:
            value = record.get(name)
            if value is not None and value not in allowed:
                raise DecodeError(
                    INVALID_EVENT, f"{name} {value!r} is not one of {sorted(allowed)}"
                )
        for name in checks.times:
            value = record[name]
            if value is not None and not EVENT_TIME_MIN_MS <= value < EVENT_TIME_END_MS:
                raise DecodeError(INVALID_EVENT, f"{name} {value} is outside {_EVENT_TIMES}")
        return record

    def _reader(self, family: str) -> SchemaVersion:
        try:
            return self.schemas.latest_version(family)
        except KeyError:
            raise ValueError(f"unknown event family {family!r}") from None

    def _plan_for_fingerprint(self, fp: bytes, family: str) -> _ReadPlan:
        reader = self._reader(family)
        writer = self.schemas.by_fingerprint(fp)
        if writer is None:
            raise DecodeError(
                UNKNOWN_SCHEMA,
                f"no schema with fingerprint {fp.hex()} under {self.schemas.root}",
            )
        if writer.family != family:
            raise DecodeError(
                WRONG_FAMILY,
                f"message is a {writer.family} v{writer.version} event, expected {family}",
            )
        plan = self._plans[(fp, family)] = _ReadPlan(
            writer, reader, _Checks(family, reader), self.compiled
        )
        return plan

    def _plan_for_schema_id(self, schema_id: int, family: str) -> _ReadPlan:
        reader = self._reader(family)
        writer = self._sr_writers.get(schema_id)
        if writer is None:
            writer = self._fetch_writer(schema_id)
        if isinstance(writer, SchemaVersion):
            if writer.family != family:
                raise DecodeError(
                    WRONG_FAMILY,
                    f"schema id {schema_id} is {writer.family} v{writer.version}, "
                    f"expected {family}",
                )
        elif writer.get("name") != reader.parsed.get("name"):
            raise DecodeError(
                WRONG_FAMILY,
                f"schema id {schema_id} is record {writer.get('name')!r}, "
                f"expected {reader.parsed.get('name')!r} ({family})",
            )
        plan = self._sr_plans[(schema_id, family)] = _ReadPlan(
            writer, reader, _Checks(family, reader), self.compiled
        )
        return plan

    def _fetch_writer(self, schema_id: int) -> SchemaVersion | dict[str, Any]:
        if self.registry is None:
            raise DecodeError(
                REGISTRY_ERROR,
                f"Confluent-framed message (schema id {schema_id}) but no schema registry "
                "is configured (set SCHEMA_REGISTRY_URL)",
            )
        seen = self._sr_unknown.get(schema_id)
        if seen is not None and time.monotonic() - seen < _UNKNOWN_ID_TTL_S:
            raise DecodeError(UNKNOWN_SCHEMA, f"schema id {schema_id} is not in the registry")
        from confluent_kafka.schema_registry import SchemaRegistryError

        try:
            schema = self.registry.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                self._sr_unknown[schema_id] = time.monotonic()
                raise DecodeError(
                    UNKNOWN_SCHEMA, f"schema id {schema_id} is not in the registry"
                ) from None
            raise DecodeError(REGISTRY_ERROR, f"schema id {schema_id}: {exc}") from None
        except Exception as exc:
            raise DecodeError(
                REGISTRY_ERROR, f"schema registry unreachable for id {schema_id}: {exc}"
            ) from None
        if (schema.schema_type or "AVRO") != "AVRO":
            raise DecodeError(
                UNKNOWN_SCHEMA, f"schema id {schema_id} is {schema.schema_type}, not AVRO"
            )
        try:
            raw_schema = json.loads(schema.schema_str or "")
            fp = fingerprint(raw_schema)
            known = self.schemas.by_fingerprint(fp)
            writer: SchemaVersion | dict[str, Any] = (
                known
                if known is not None
                # A version we do not ship yet (a newer producer): still readable through
                # resolution against our newest reader.
                else cast(dict[str, Any], fastavro.parse_schema(strip_logical_types(raw_schema)))
            )
        except Exception as exc:
            raise DecodeError(
                UNKNOWN_SCHEMA, f"schema id {schema_id} does not parse: {exc}"
            ) from None
        if not isinstance(writer, SchemaVersion) and writer.get("type") != "record":
            raise DecodeError(UNKNOWN_SCHEMA, f"schema id {schema_id} is not a record schema")
        self._sr_writers[schema_id] = writer
        return writer
