"""The SIEM's ECS documents, field by field, against the ECS field reference of the version
they claim (9.4.0's ecs_flat.yml, vendored in tests/unit/reference/ by
dev/refdata/vendor.py): every field exists with its type, every enumerated value is
allowed, every category is paired only with the types ECS expects for it."""

from __future__ import annotations

import ipaddress
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sinks.ecs import ECS_KINDS, ECS_VERSION, SEVERITIES, syslog_severity, to_ecs
from sinks.siem import FACILITY_AUTHPRIV, rfc5424_frame

REFERENCE = json.loads(
    (Path(__file__).parent / "reference" / f"ecs-{ECS_VERSION}.json").read_text()
)
FIELDS = REFERENCE["fields"]


def full_event(event_type: str) -> dict[str, Any]:
    """An event of this type with every field the ECS mapping reads."""
    return {
        "event_id": "5f0c6c1e-8f0a-4e38-9a3e-2b7d4f1c9a10",
        "event_type": event_type,
        "occurred_at": 1_763_500_000_123,
        "tenant_id": "acme",
        "source": "auth-service",
        "user_id": "u-1",
        "impersonator_user_id": "admin-7" if event_type == "admin_impersonation_started" else None,
        "ip_address": "2001:db8::1" if event_type.endswith("failed") else "203.0.113.9",
        "user_agent": "Mozilla/5.0",
        "outcome": "blocked" if event_type == "security_data_access" else None,
        "failure_reason": "bad_password" if event_type == "security_login_failed" else None,
        "reason": "ticket SEC-42",
        "auth_method": "password",
        "resource": "leads",
        "data_scope": "pii",
        "sensitive": True,
        "record_count": 1200,
        "session_id": "s-9",
        "geo_country": "FR",
        "risk_score": 0.87 if event_type == "security_suspicious_activity" else None,
        "target_type": "user",
        "target_id": "u-2",
        "before": {"role": "member", "api_key": "sk-live-1"},
        "after": {"role": "admin"},
        "approval_of": "req-1" if event_type == "admin_data_export_approved" else None,
    }


def flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def ecs_fields(doc: dict[str, Any]) -> dict[str, Any]:
    """The document's leaf fields outside Sluice's own namespace."""
    return {k: v for k, v in flatten(doc).items() if not k.startswith("sluice.")}


def check_type(name: str, value: Any) -> None:
    spec = FIELDS[name]
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list):
        assert "array" in spec.get("normalize", []), f"{name} is not an array field"
    for v in values:
        kind = spec["type"]
        if kind in {"keyword", "constant_keyword", "wildcard"}:
            assert isinstance(v, str) and v, name
        elif kind == "long":
            assert isinstance(v, int) and not isinstance(v, bool), name
        elif kind in {"float", "scaled_float", "double"}:
            assert isinstance(v, float), name
        elif kind == "ip":
            ipaddress.ip_address(v)
        elif kind == "date":
            assert v.endswith("Z") and datetime.fromisoformat(v.replace("Z", "+00:00")), name
        else:  # pragma: no cover - a field type this test does not know yet
            pytest.fail(f"{name}: unchecked ECS type {kind}")


def test_the_reference_is_the_version_documents_claim():
    assert REFERENCE["version"] == ECS_VERSION == REFERENCE["_provenance"]["tag"][1:]


@pytest.mark.parametrize("event_type", sorted(ECS_KINDS))
def test_every_field_exists_in_ecs_with_its_type(event_type: str):
    doc = to_ecs(full_event(event_type))
    fields = ecs_fields(doc)
    assert set(fields) <= set(FIELDS), set(fields) - set(FIELDS)
    for name, value in fields.items():
        check_type(name, value)
    assert doc["ecs"]["version"] == ECS_VERSION


@pytest.mark.parametrize("event_type", sorted(ECS_KINDS))
def test_enumerated_values_are_allowed_and_categories_get_their_expected_types(event_type):
    event = to_ecs(full_event(event_type))["event"]
    allowed = {f: FIELDS[f"event.{f}"]["allowed_values"] for f in ("kind", "category", "type")}
    assert event["kind"] in allowed["kind"]
    assert event["outcome"] in FIELDS["event.outcome"]["allowed_values"]
    assert event["type"] and all(t in allowed["type"] for t in event["type"])
    for category in event["category"]:
        expected = allowed["category"][category]  # KeyError: not an ECS category
        for t in event["type"]:
            assert t in expected, f"{event_type}: event.type {t} with event.category {category}"


def test_the_pairs_the_issue_found_are_fixed():
    suspicious = to_ecs(full_event("security_suspicious_activity"))["event"]
    assert (suspicious["kind"], suspicious["category"], suspicious["type"]) == (
        "alert",
        ["intrusion_detection"],
        ["info"],
    )
    approved = to_ecs(full_event("admin_data_export_approved"))["event"]
    assert (approved["category"], approved["type"], approved["outcome"]) == (
        ["database"],
        ["access"],
        "success",
    )


# Sluice's event.severity scale (docs/sinks.md): higher is worse; syslog's: lower is worse
SEVERITY = {
    "security_login_succeeded": (1, 6),
    "security_login_failed": (3, 4),
    "security_suspicious_activity": (5, 2),
    "security_data_access": (2, 5),
    "admin_role_changed": (2, 5),
    "admin_permission_changed": (2, 5),
    "admin_data_export_requested": (2, 5),
    "admin_data_export_approved": (2, 5),
    "admin_impersonation_started": (3, 4),
    "admin_account_locked": (3, 4),
    "admin_account_deleted": (3, 4),
}


def test_severity_is_sluices_documented_scale_and_syslog_keeps_its_own():
    assert set(SEVERITY) == set(ECS_KINDS)
    assert [s.ecs for s in SEVERITIES.values()] == [1, 2, 3, 4, 5]
    assert [s.syslog for s in SEVERITIES.values()] == [6, 5, 4, 3, 2]
    for event_type, (ecs_severity, syslog) in SEVERITY.items():
        doc = to_ecs(full_event(event_type))
        assert doc["event"]["severity"] == ecs_severity, event_type
        assert syslog_severity(event_type) == syslog, event_type
        frame = rfc5424_frame(doc, "host")
        assert frame.split(b" ", 1)[1].startswith(b"<%d>1 " % (FACILITY_AUTHPRIV * 8 + syslog))
    docs = (Path(__file__).resolve().parents[2] / "docs" / "sinks.md").read_text()
    assert "ECS 9.4.0" in docs and "1 info" in docs and "5 critical" in docs


def test_field_by_field_values():
    doc = to_ecs(full_event("admin_impersonation_started"))
    assert doc["@timestamp"] == "2025-11-18T21:06:40.123Z"
    assert doc["event"]["id"] == "5f0c6c1e-8f0a-4e38-9a3e-2b7d4f1c9a10"
    assert doc["event"]["action"] == "admin_impersonation_started"
    assert doc["event"]["dataset"] == "sluice.admin" and doc["event"]["provider"] == "auth-service"
    assert doc["event"]["reason"] == "ticket SEC-42" and doc["event"]["outcome"] == "unknown"
    assert doc["organization"] == {"id": "acme"}
    assert doc["user"] == {"id": "admin-7", "effective": {"id": "u-1"}, "target": {"id": "u-2"}}
    assert doc["source"] == {"ip": "203.0.113.9", "geo": {"country_iso_code": "FR"}}
    assert doc["user_agent"] == {"original": "Mozilla/5.0"}
    assert doc["sluice"]["change"]["before"] == {"role": "member", "api_key": "[redacted]"}
    failed = to_ecs(full_event("security_login_failed"))
    assert failed["source"]["ip"] == "2001:db8::1" and failed["event"]["outcome"] == "failure"
    assert failed["event"]["reason"] == "bad_password" and failed["event"]["dataset"] == (
        "sluice.security"
    )
    suspicious = to_ecs(full_event("security_suspicious_activity"))["event"]
    assert suspicious["risk_score"] == 0.87 and suspicious["risk_score_norm"] == 87.0


def test_outcomes_map_onto_ecs_three_values():
    def outcome(value: str | None) -> tuple[str, str | None]:
        doc = to_ecs({**full_event("security_data_access"), "outcome": value})
        return doc["event"]["outcome"], doc["sluice"].get("outcome")

    assert outcome("success") == ("success", None)
    assert outcome("blocked") == ("failure", "blocked")  # the producer's word is kept
    assert outcome("denied") == ("failure", "denied")
    assert outcome("weird") == ("unknown", "weird")
    assert outcome(None) == ("unknown", None)


def test_an_address_ecs_cannot_index_moves_to_sluice():
    doc = to_ecs({**full_event("security_login_succeeded"), "ip_address": "not-an-ip"})
    assert "ip" not in doc["source"] and doc["sluice"]["client_address"] == "not-an-ip"
    doc = to_ecs({**full_event("security_suspicious_activity"), "risk_score": 7.5})
    assert doc["event"]["risk_score"] == 7.5 and "risk_score_norm" not in doc["event"]
