"""The wire codec: validation, both framings, schema evolution, and hostile bytes."""

from __future__ import annotations

import io
import json
import random
import shutil
import timeit
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from avro_schemas import SCHEMA_DIR, SchemaRepo, default_repo, fingerprint, latest, lookup
from avro_schemas.codec import (
    EVENT_TIME_END_MS,
    EVENT_TIME_MIN_MS,
    Codec,
    DecodeError,
    ValidationError,
    to_epoch_ms,
)
from sluice.settings import Settings
from topics.taxonomy import EVENT_TYPES, FAMILIES

T0 = 1_738_324_800_000  # 2025-01-31T12:00:00Z


def no_registry() -> Settings:
    return Settings(_env_file=None, schema_registry_url=None)


@pytest.fixture
def codec() -> Codec:
    return Codec(settings=no_registry())


def minimal(family: str, **overrides: Any) -> dict[str, Any]:
    """Only the documented fields: always valid."""
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event_type": sorted(EVENT_TYPES[family])[0],
        "occurred_at": T0,
        "tenant_id": "tenant-1",
        "source": "test",
    }
    if family == "email":
        event.update(email_id="em-1", campaign_id="c-1", mailbox_id="mb-1", lead_id="l-1")
    if family == "warmup":
        event.update(mailbox_id="mb-1", email_id="wu-1")
    event.update(overrides)
    return event


def full(family: str, rng: random.Random | None = None) -> dict[str, Any]:
    """Every field of the family's newest schema set to a value of its type."""
    rng = rng or random.Random(7)
    event = minimal(family)
    for field in latest(family)["fields"]:
        name = field["name"]
        if name in event:
            continue
        type_ = field["type"]
        base = [b for b in type_ if b != "null"][0] if isinstance(type_, list) else type_
        kind = base.get("logicalType") or base["type"] if isinstance(base, dict) else base
        value: Any = {
            "string": f"{name}-{rng.randint(0, 10**6)}-é✓",
            "int": rng.randint(-(2**31), 2**31 - 1),
            "long": rng.randint(-(2**63), 2**63 - 1),
            "double": rng.uniform(-1e9, 1e9),
            "boolean": rng.random() < 0.5,
            "timestamp-millis": T0 + rng.randint(-(10**9), 10**9),
            "array": [f"svc-{i}" for i in range(rng.randint(0, 3))],
            "map": {f"k{i}": f"v{i}" for i in range(rng.randint(0, 3))},
        }[kind]
        event[name] = value
    if family == "email":
        event["bounce_type"] = "hard"
    if family == "warmup":
        event["folder"] = "spam"
    return event


# --------------------------------------------------------------------------- schemas


def test_fingerprint_is_crc64_avro_little_endian() -> None:
    # Test vector of the Avro spec / Java implementation for the schema "int".
    assert fingerprint('"int"') == bytes.fromhex("8f5c393f1ad57572")
    parsed = latest("email")
    assert lookup(fingerprint(parsed)) == ("email", 1, parsed)
    assert lookup(b"\0" * 8) is None


def test_every_family_has_a_schema() -> None:
    repo = default_repo()
    assert sorted(repo.families()) == sorted(FAMILIES)
    for family in FAMILIES:
        found = [v for v, _ in repo.versions(family)]
        assert found == list(range(1, len(found) + 1)), (family, found)
    # v2 of admin_action: the fields of a lead's erasure request
    assert [v for v, _ in repo.versions("admin_action")] == [1, 2]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_minimal(codec: Codec, family: str) -> None:
    event = minimal(family)
    raw = codec.encode(family, event)
    assert raw[:2] == b"\xc3\x01"
    assert raw[2:10] == default_repo().latest_version(family).fingerprint
    decoded = codec.decode(raw, family)
    assert decoded == codec.validate(family, event)
    assert decoded["occurred_at"] == T0 and isinstance(decoded["occurred_at"], int)
    assert set(decoded) == {f["name"] for f in latest(family)["fields"]}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("compiled", [True, False])
def test_round_trip_every_field(family: str, compiled: bool) -> None:
    codec = Codec(settings=no_registry(), compiled=compiled)
    rng = random.Random(family)
    for _ in range(25):
        event = full(family, rng)
        decoded = codec.decode(codec.encode(family, event), family)
        assert decoded == codec.validate(family, event)
        for name, value in event.items():
            if isinstance(value, float):
                assert decoded[name] == pytest.approx(value)
            elif name != "event_id":
                assert decoded[name] == value


def test_compiled_reader_agrees_with_fastavro_on_mutations() -> None:
    fast = Codec(settings=no_registry())
    slow = Codec(settings=no_registry(), compiled=False)
    rng = random.Random(3)
    agreed = 0
    for family in FAMILIES:
        for _ in range(200):
            raw = bytearray(fast.encode(family, full(family, rng)))
            for _ in range(rng.randint(1, 3)):
                raw[rng.randrange(10, len(raw))] = rng.randrange(256)
            results = []
            for c in (fast, slow):
                try:
                    results.append(c.decode(bytes(raw), family))
                except DecodeError as exc:
                    results.append(exc.reason)
            if isinstance(results[0], dict) and isinstance(results[1], dict):
                assert results[0] == results[1]
                agreed += 1
    assert agreed > 0


# --------------------------------------------------------------------------- evolution


def _tree_with_v2(tmp_path: Path, family: str, change: Any) -> Path:
    root = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    schema = json.loads((root / family / "v1.avsc").read_text())
    change(schema)
    (root / family / "v2.avsc").write_text(json.dumps(schema))
    return root


def _add_campaign_name(schema: dict[str, Any]) -> None:
    schema["fields"].append(
        {"name": "campaign_name", "type": ["null", "string"], "default": None, "doc": "New."}
    )


def test_v1_writer_v2_reader_and_back(tmp_path: Path) -> None:
    v1_only = SchemaRepo(SCHEMA_DIR)
    both = SchemaRepo(_tree_with_v2(tmp_path, "email", _add_campaign_name))
    old = Codec(v1_only, settings=no_registry())
    new = Codec(both, settings=no_registry())

    from_old = old.encode("email", minimal("email"))
    from_new = new.encode("email", minimal("email", campaign_name="Spring"))
    assert from_old[2:10] != from_new[2:10]

    # new reader, old writer: the added field takes its default
    assert new.decode(from_old, "email")["campaign_name"] is None
    assert new.decode(from_new, "email")["campaign_name"] == "Spring"
    # old reader, new writer: the unknown field is dropped
    assert "campaign_name" not in old.decode(from_old, "email")
    with pytest.raises(DecodeError) as exc_info:
        old.decode(from_new, "email")  # old readers do not know v2's fingerprint
    assert exc_info.value.reason == "unknown_schema"

    # one codec, writers of both versions interleaved
    mixed = [new.encode("email", minimal("email"), version=v) for v in (1, 2, 1, 2)]
    assert [new.decode(raw, "email")["campaign_name"] for raw in mixed] == [None] * 4
    with pytest.raises(ValidationError, match="campaign_name"):
        new.encode("email", minimal("email", campaign_name="x"), version=1)


def test_schema_dir_setting_selects_the_tree(tmp_path: Path) -> None:
    root = _tree_with_v2(tmp_path, "email", _add_campaign_name)
    codec = Codec(settings=Settings(_env_file=None, sluice_schema_dir=str(root)))
    assert codec.schemas.root == root.resolve()
    assert codec.schemas.latest_version("email").version == 2
    assert Codec(settings=no_registry()).schemas is default_repo()
    # what a v2 producer writes, a worker on the shipped tree cannot read (yet)
    raw = codec.encode("email", minimal("email", campaign_name="Spring"))
    assert codec.decode(raw, "email")["campaign_name"] == "Spring"
    assert reason(Codec(settings=no_registry()), raw) == "unknown_schema"
    with pytest.raises(ValueError, match="not a directory"):
        Settings(_env_file=None, sluice_schema_dir=str(tmp_path / "missing"))


def test_resolution_with_type_promotion_uses_fastavro(tmp_path: Path) -> None:
    def promote(schema: dict[str, Any]) -> None:
        for field in schema["fields"]:
            if field["name"] == "smtp_code":
                field["type"] = ["null", "long"]

    old = Codec(SchemaRepo(SCHEMA_DIR), settings=no_registry())
    new = Codec(SchemaRepo(_tree_with_v2(tmp_path, "email", promote)), settings=no_registry())
    raw = old.encode("email", minimal("email", smtp_code=550))
    assert new.decode(raw, "email")["smtp_code"] == 550
    with pytest.raises(DecodeError) as exc_info:
        new.decode(raw[:-3], "email")
    assert exc_info.value.reason == "malformed_avro"


# --------------------------------------------------------------------------- bad bytes


def reason(codec: Codec, raw: bytes, family: str = "email") -> str:
    with pytest.raises(DecodeError) as exc_info:
        codec.decode(raw, family)
    assert exc_info.value.detail
    return exc_info.value.reason


@pytest.mark.parametrize("compiled", [True, False])
def test_hostile_bytes(compiled: bool) -> None:
    codec = Codec(settings=no_registry(), compiled=compiled)
    raw = codec.encode("email", full("email"))
    header = raw[:10]
    assert reason(codec, b"") == "empty"
    assert reason(codec, b"\x01" + raw[1:]) == "bad_magic"
    assert reason(codec, b"\xc3\x02" + raw[2:]) == "bad_magic"
    assert reason(codec, b'{"event_type": "email_sent"}') == "bad_magic"
    assert reason(codec, b"\xc3\x01" + b"\0" * 8 + raw[10:]) == "unknown_schema"
    for cut in range(1, len(raw)):
        assert reason(codec, raw[:cut]) in {"malformed_avro", "bad_magic"}, cut
    assert reason(codec, raw + b"\x00") == "malformed_avro"
    assert reason(codec, header) == "malformed_avro"
    warmup = codec.encode("warmup", minimal("warmup"))
    assert reason(codec, warmup, "email") == "wrong_family"


@pytest.mark.parametrize("compiled", [True, False])
def test_two_megabytes_of_garbage(compiled: bool) -> None:
    codec = Codec(settings=no_registry(), compiled=compiled)
    rng = random.Random(11)
    garbage = bytes(rng.getrandbits(8) for _ in range(2 * 1024 * 1024))
    header = codec.encode("email", minimal("email"))[:10]
    assert reason(codec, b"\x42" + garbage) == "bad_magic"
    assert reason(codec, header + garbage) == "malformed_avro"
    assert reason(codec, b"\x00\x00\x00\x00\x07" + garbage) == "registry_error"
    elapsed = timeit.timeit(lambda: reason(codec, header + garbage), number=1)
    assert elapsed < 1.0


def _raw_body(family: str, record: dict[str, Any]) -> bytes:
    """Bytes that skip validation (what a buggy producer could send)."""
    sv = default_repo().latest_version(family)
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + sv.fingerprint)
    fastavro.schemaless_writer(buf, sv.wire, record)
    return buf.getvalue()


def test_decode_checks_the_event(codec: Codec) -> None:
    good = codec.validate("email", minimal("email"))
    assert codec.decode(_raw_body("email", good), "email") == good
    assert reason(codec, _raw_body("email", {**good, "event_type": "email_teleported"})) == (
        "unknown_event_type"
    )
    assert reason(codec, _raw_body("email", {**good, "event_type": "warmup_email_sent"})) == (
        "unknown_event_type"
    )
    assert reason(codec, _raw_body("email", {**good, "tenant_id": ""})) == "invalid_event"
    assert reason(codec, _raw_body("email", {**good, "campaign_id": ""})) == "invalid_event"
    assert reason(codec, _raw_body("email", {**good, "bounce_type": "medium"})) == "invalid_event"


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize(
    ("family", "field"),
    [
        ("email", "occurred_at"),
        ("email", "sent_at"),
        ("system", "started_at"),
        ("infra", "occurred_at"),
    ],
)
def test_decode_takes_only_event_times_the_olap_can_hold(family, field, compiled) -> None:
    # a producer that skips validation can write any long: a day ClickHouse's Date cannot
    # hold would fail every checkpoint after it, so it is a dead letter instead
    codec = Codec(settings=no_registry(), compiled=compiled)
    good = codec.validate(family, minimal(family))
    for ms in (EVENT_TIME_MIN_MS, EVENT_TIME_END_MS - 1):
        assert codec.decode(_raw_body(family, {**good, field: ms}), family)[field] == ms
    for ms in (EVENT_TIME_MIN_MS - 1, EVENT_TIME_END_MS, 2**62, -(2**62)):
        with pytest.raises(DecodeError, match=field) as exc_info:
            codec.decode(_raw_body(family, {**good, field: ms}), family)
        assert exc_info.value.reason == "invalid_event"


@pytest.mark.parametrize(
    "value", [-1, EVENT_TIME_END_MS, "1969-12-31T23:59:59Z", "2150-01-01T00:00:00Z"]
)
def test_encode_refuses_event_times_outside_the_range(codec: Codec, value: Any) -> None:
    with pytest.raises(ValidationError, match="1970-01-01 to 2149-06-06") as exc_info:
        codec.validate("email", minimal("email", occurred_at=value))
    assert exc_info.value.field == "occurred_at"


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "value",
    [
        T0,
        float(T0) + 0.4,
        str(T0),
        "2025-01-31T12:00:00Z",
        "2025-01-31T12:00:00.000+00:00",
        "2025-01-31T13:00:00+01:00",
        "2025-01-31T07:00:00-05:00",
        "2025-01-31T12:00:00",  # naive: UTC
        "2025-01-31 12:00:00Z",
        datetime(2025, 1, 31, 12, tzinfo=UTC),
        datetime(2025, 1, 31, 14, tzinfo=timezone(timedelta(hours=2))),
        datetime(2025, 1, 31, 12),  # naive: UTC
    ],
)
def test_timestamps_normalize_to_epoch_ms(codec: Codec, value: Any) -> None:
    assert to_epoch_ms(value) == T0
    event = codec.validate("system", minimal("system", occurred_at=value, started_at=value))
    assert event["occurred_at"] == T0 and event["started_at"] == T0
    decoded = codec.decode(codec.encode("system", minimal("system", occurred_at=value)), "system")
    assert decoded["occurred_at"] == T0


def test_timestamp_keeps_milliseconds() -> None:
    assert to_epoch_ms("2025-01-31T12:00:00.123456Z") == T0 + 123
    assert to_epoch_ms("1969-12-31T23:59:59.999Z") == -1


@pytest.mark.parametrize("value", ["yesterday", "2025-13-01T00:00:00Z", True, None, [T0]])
def test_bad_timestamps_are_rejected(codec: Codec, value: Any) -> None:
    with pytest.raises(ValidationError, match="occurred_at") as exc_info:
        codec.validate("email", minimal("email", occurred_at=value))
    assert exc_info.value.field == "occurred_at"


@pytest.mark.parametrize(
    ("family", "change", "field", "match"),
    [
        ("email", {"campaing_id": "c"}, "campaing_id", "did you mean 'campaign_id'"),
        ("email", {"campaign_id": None}, "campaign_id", "missing required field"),
        ("email", {"campaign_id": "  "}, "campaign_id", "non-empty"),
        ("email", {"tenant_id": ""}, "tenant_id", "non-empty"),
        ("security", {"source": ""}, "source", "non-empty"),
        ("email", {"event_id": "not-a-uuid"}, "event_id", "UUID"),
        ("email", {"event_id": 12}, "event_id", "string"),
        ("email", {"bounce_type": "medium"}, "bounce_type", "hard, soft"),
        ("warmup", {"folder": "trash"}, "folder", "inbox, other, spam"),
        ("email", {"smtp_code": "550"}, "smtp_code", "integer"),
        ("email", {"smtp_code": True}, "smtp_code", "boolean"),
        ("email", {"smtp_code": 2**40}, "smtp_code", "out of range"),
        ("security", {"sensitive": "yes"}, "sensitive", "true or false"),
        ("system", {"affected_services": "api"}, "affected_services", "list of strings"),
        ("admin_action", {"before": {"k": {"x": 1}}}, "before", "map values"),
    ],
)
def test_validation_names_the_field(
    codec: Codec, family: str, change: dict[str, Any], field: str, match: str
) -> None:
    event = minimal(family)
    event.update(change)
    with pytest.raises(ValidationError, match=match) as exc_info:
        codec.encode(family, event)
    assert exc_info.value.field == field
    assert field in str(exc_info.value)


def test_unknown_event_type(codec: Codec) -> None:
    with pytest.raises(ValidationError) as exc_info:
        codec.validate("email", minimal("email", event_type="warmup_email_sent"))
    assert exc_info.value.reason == "unknown_event_type"
    assert exc_info.value.field == "event_type"


def test_validate_normalizes(codec: Codec) -> None:
    event_id = uuid.uuid4()
    out = codec.validate(
        "admin_action",
        minimal(
            "admin_action",
            event_id=str(event_id).upper(),
            before={"seats": 5, "sso": True},
            record_count=3.0,
        ),
    )
    assert out["event_id"] == str(event_id)
    assert out["before"] == {"seats": "5", "sso": "true"}
    assert out["record_count"] == 3 and isinstance(out["record_count"], int)
    assert out["user_id"] is None and out["after"] is None


# --------------------------------------------------------------------------- registry


def test_registry_round_trip_and_both_framings() -> None:
    from topics.catalog import Catalog

    client = SchemaRegistryClient.new_client({"url": "mock://test"})
    registry_codec = Codec(registry=client)
    assert registry_codec.framing == "confluent"
    plain = Codec(settings=no_registry())
    assert plain.framing == "single_object"

    event = minimal("email", sent_at="2025-01-31T11:00:00Z")
    raw = registry_codec.encode("email", event)
    assert raw[0] == 0 and len(raw) > 5
    schema_id = int.from_bytes(raw[1:5], "big")
    subject = f"{Catalog().for_family('email').name}-value"
    assert client.get_latest_version(subject).schema_id == schema_id
    assert registry_codec.encode("email", event)[:5] == raw[:5]  # id cached

    expected = plain.validate("email", event)
    assert registry_codec.decode(raw, "email") == expected
    # a fresh codec (another process) fetches the writer schema by id
    assert Codec(registry=client).decode(raw, "email") == expected
    # single-object bytes decode with a registry configured, too
    assert registry_codec.decode(plain.encode("email", event), "email") == expected
    # Confluent framing without a registry: a transient error, not a crash
    assert reason(plain, raw) == "registry_error"

    assert reason(registry_codec, b"\x00\x00\x00\x30\x39" + raw[5:]) == "unknown_schema"
    warmup = registry_codec.encode("warmup", minimal("warmup"))
    assert reason(Codec(registry=client), warmup, "email") == "wrong_family"
    assert reason(registry_codec, raw[:-2]) == "malformed_avro"


def test_registry_writer_we_do_not_ship_is_resolved() -> None:
    client = SchemaRegistryClient.new_client({"url": "mock://newer"})
    newer = json.loads((SCHEMA_DIR / "email" / "v1.avsc").read_text())
    _add_campaign_name(newer)
    schema_id = client.register_schema("events.email-value", Schema(json.dumps(newer), "AVRO"))
    event = Codec(settings=no_registry()).validate("email", minimal("email"))
    buf = io.BytesIO()
    buf.write(b"\x00" + schema_id.to_bytes(4, "big"))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(newer), {**event, "campaign_name": "x"})
    decoded = Codec(registry=client).decode(buf.getvalue(), "email")
    assert decoded == event


def test_registry_from_settings() -> None:
    codec = Codec(settings=Settings(_env_file=None, schema_registry_url="mock://from-settings"))
    assert codec.framing == "confluent"
    assert codec.encode("email", minimal("email"))[0] == 0


# --------------------------------------------------------------------------- speed


def test_decode_is_fast(codec: Codec) -> None:
    raw = codec.encode("email", minimal("email", user_agent="Mozilla/5.0", ip_address="1.2.3.4"))
    codec.decode(raw, "email")
    n = 20_000
    per_event_us = min(timeit.repeat(lambda: codec.decode(raw, "email"), number=n, repeat=3))
    per_event_us = per_event_us / n * 1e6
    print(f"decode: {per_event_us:.2f} µs/event")
    assert per_event_us < 100  # generous: catches accidental O(schema) work per event


# --------------------------------------------------------------------------- compiled reader


EXOTIC = {
    "type": "record",
    "name": "Exotic",
    "namespace": "t",
    "fields": [
        {"name": "f", "type": "float"},
        {"name": "b", "type": "bytes"},
        {"name": "flag", "type": "boolean"},
        {"name": "color", "type": {"type": "enum", "name": "Color", "symbols": ["R", "G"]}},
        {"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 4}},
        {
            "name": "inner",
            "type": {
                "type": "record",
                "name": "Inner",
                "fields": [{"name": "n", "type": "long"}, {"name": "c", "type": "Color"}],
            },
        },
        {"name": "inners", "type": {"type": "array", "items": "Inner"}},
        {"name": "nested", "type": {"type": "map", "values": {"type": "array", "items": "int"}}},
        {"name": "multi", "type": ["null", "string", "long", "Hash"]},
        {"name": "nulls", "type": {"type": "array", "items": "null"}},
    ],
}


def test_compiled_reader_handles_every_avro_type() -> None:
    from avro_schemas.codec import _compile_reader

    parsed = fastavro.parse_schema(EXOTIC)
    read = _compile_reader(parsed)
    assert read is not None
    rng = random.Random(5)
    for i in range(200):
        record = {
            "f": 1.5,
            "b": rng.randbytes(rng.randint(0, 5)),
            "flag": i % 2 == 0,
            "color": "G",
            "hash": b"abcd",
            "inner": {"n": rng.randint(-(2**63), 2**63 - 1), "c": "R"},
            "inners": [{"n": j, "c": "G"} for j in range(rng.randint(0, 3))],
            "nested": {f"k{j}": list(range(j)) for j in range(rng.randint(0, 3))},
            "multi": [None, "s", 2**40, b"wxyz"][i % 4],
            "nulls": [None] * rng.randint(0, 3),
        }
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, record)
        data = buf.getvalue()
        assert read(data, 0) == (record, len(data))
        for cut in range(len(data)):
            try:
                value, pos = read(data[:cut], 0)
            except Exception:
                continue
            assert pos <= cut < len(data)  # never claims more bytes than it has


def test_recursive_schema_falls_back_to_fastavro() -> None:
    from avro_schemas.codec import _compile_reader

    node = {
        "type": "record",
        "name": "Node",
        "fields": [{"name": "next", "type": ["null", "Node"]}],
    }
    assert _compile_reader(fastavro.parse_schema(node)) is None
