"""Security events as Elastic Common Schema (ECS) documents, for the SIEM (pure).

Target: **ECS 9.4.0**. Every ``event.kind``, ``event.category``, ``event.type`` and
``event.outcome`` value is one ECS allows, and every category is paired only with the
event types ECS expects for it (``expected_event_types``), for every category × type of
a document. ``tests/unit/test_ecs_reference.py`` checks that, and every field's type,
against ECS 9.4.0's ``ecs_flat.yml`` (vendored in tests/unit/reference/).

``event.severity`` is Sluice's scale, documented in docs/sinks.md: 1 info, 2 low,
3 medium, 4 high, 5 critical (higher is worse). ECS leaves the meaning to the source and
says the syslog severity (lower is worse) does not belong there; the syslog transport
puts that one in the record's PRI instead (:data:`SEVERITIES` pairs the two scales).

The SIEM is the one destination that gets PII (IPs, user agents) in clear text: it is
where forensics happen. It never gets secrets: keys of before/after maps that look like
credentials are redacted. Fields ECS has no name for live under ``sluice.*`` (ECS says
custom fields go in their own namespace).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

ECS_VERSION = "9.4.0"


@dataclass(frozen=True)
class Severity:
    """One level of Sluice's severity scale and the syslog severity it is sent with."""

    ecs: int  # event.severity: higher is worse
    syslog: int  # RFC 5424 severity in the syslog PRI: lower is worse


SEVERITIES: Mapping[str, Severity] = MappingProxyType(
    {
        "info": Severity(1, 6),  # informational
        "low": Severity(2, 5),  # notice
        "medium": Severity(3, 4),  # warning
        "high": Severity(4, 3),  # error
        "critical": Severity(5, 2),  # critical
    }
)


@dataclass(frozen=True)
class EcsKind:
    """How one event type is categorised (ECS ``event.kind/category/type``)."""

    category: tuple[str, ...]
    type: tuple[str, ...]
    kind: str = "event"
    outcome: str | None = None  # when the event type implies it
    severity: str = "low"  # a key of SEVERITIES


_IAM_CHANGE = EcsKind(("iam",), ("change",))
_EXPORT = EcsKind(("database",), ("access",))
ECS_KINDS: Mapping[str, EcsKind] = MappingProxyType(
    {
        "security_login_succeeded": EcsKind(
            ("authentication",), ("start",), outcome="success", severity="info"
        ),
        "security_login_failed": EcsKind(
            ("authentication",), ("start",), outcome="failure", severity="medium"
        ),
        # A detector's finding about this system: an alert in intrusion_detection, whose
        # expected types are allowed/denied/info (`indicator` is threat intelligence's).
        "security_suspicious_activity": EcsKind(
            ("intrusion_detection",), ("info",), kind="alert", severity="critical"
        ),
        "security_data_access": EcsKind(("database",), ("access",)),
        "admin_role_changed": _IAM_CHANGE,
        "admin_permission_changed": _IAM_CHANGE,
        # database expects access/change/info/error: an approval is told apart from the
        # request by event.action and its outcome, not by a type database does not expect
        "admin_data_export_requested": _EXPORT,
        "admin_data_export_approved": EcsKind(("database",), ("access",), outcome="success"),
        # a session started as someone else (user.effective.id); iam would need a type of
        # its own (admin), and admin is not a session type
        "admin_impersonation_started": EcsKind(("session",), ("start",), severity="medium"),
        "admin_account_locked": EcsKind(("iam",), ("user", "change"), severity="medium"),
        "admin_account_deleted": EcsKind(("iam",), ("user", "deletion"), severity="medium"),
    }
)

# what producers write in `outcome` → ECS event.outcome (success, failure, unknown)
_OUTCOMES = MappingProxyType(
    {
        "success": "success",
        "succeeded": "success",
        "allowed": "success",
        "failure": "failure",
        "failed": "failure",
        "blocked": "failure",  # the actor's action did not happen
        "denied": "failure",
    }
)

_SECRET_KEY = re.compile(r"pass|secret|token|api[_-]?key|credential|private|otp|session", re.I)


def syslog_severity(event_type: str) -> int:
    """The RFC 5424 severity a record of this event type is sent with."""
    return SEVERITIES[ECS_KINDS[event_type].severity].syslog


def _iso(epoch_ms: int) -> str:
    return (
        datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _redacted(change: Mapping[str, str] | None) -> dict[str, str] | None:
    if not change:
        return None
    return {k: ("[redacted]" if _SECRET_KEY.search(k) else v) for k, v in change.items()}


def _ip(value: Any) -> str | None:
    """An IP address as ECS's ``ip`` type takes it, or None (Elasticsearch refuses a
    document whose ``ip`` field does not parse)."""
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def _risk_norm(score: Any) -> float | None:
    """A detector's 0.0–1.0 score on ECS's 0–100 ``risk_score_norm`` scale."""
    if isinstance(score, int | float) and 0.0 <= score <= 1.0:
        return round(float(score) * 100.0, 6)
    return None


def _prune(value: dict[str, Any]) -> dict[str, Any]:
    """Drop None values and empty objects, recursively.

    Recurses into objects only (one call per object, not per value: a document has ~60
    values and ~15 objects; this ran ~45 calls a document and was a third of ``to_ecs``).
    """
    out: dict[str, Any] = {}
    for k, v in value.items():
        if v is None:
            continue
        if isinstance(v, dict):
            v = _prune(v)
            if not v:
                continue
        out[k] = v
    return out


def to_ecs(event: Mapping[str, Any]) -> dict[str, Any]:
    """One decoded security or admin event → one ECS document (idempotency key: event.id)."""
    event_type = event["event_type"]
    kind = ECS_KINDS[event_type]
    outcome = kind.outcome or _OUTCOMES.get(str(event.get("outcome") or "").lower(), "unknown")
    actor = event.get("impersonator_user_id")
    target_type, target_id = event.get("target_type"), event.get("target_id")
    ip = _ip(event.get("ip_address"))
    risk = event.get("risk_score")
    doc = {
        "@timestamp": _iso(event["occurred_at"]),
        "ecs": {"version": ECS_VERSION},
        "event": {
            "id": event["event_id"],
            "kind": kind.kind,
            "category": list(kind.category),
            "type": list(kind.type),
            "action": event_type,
            "outcome": outcome,
            "dataset": "sluice.security" if event_type.startswith("security_") else "sluice.admin",
            "provider": event.get("source"),
            "reason": event.get("failure_reason") or event.get("reason"),
            "risk_score": float(risk) if isinstance(risk, int | float) else None,
            "risk_score_norm": _risk_norm(risk),
            "severity": SEVERITIES[kind.severity].ecs,
        },
        "organization": {"id": event.get("tenant_id")},
        # Impersonation: the real actor is user.id, the account acted as is user.effective.
        "user": {
            "id": actor or event.get("user_id"),
            "effective": {"id": event.get("user_id")} if actor else None,
            "target": {"id": target_id} if target_type in {"user", "account"} else None,
        },
        "source": {
            "ip": ip,
            "geo": {"country_iso_code": event.get("geo_country")},
        },
        "user_agent": {"original": event.get("user_agent")},
        "sluice": {
            "auth_method": event.get("auth_method"),
            "resource": event.get("resource"),
            "data_scope": event.get("data_scope"),
            "sensitive": event.get("sensitive"),
            "record_count": event.get("record_count"),
            "session_id": event.get("session_id"),
            "approval_of": event.get("approval_of"),
            # kept for forensics when it is not an address ECS's ip type accepts
            "client_address": event.get("ip_address") if ip is None else None,
            # the producer's own word when ECS's three values lose it (blocked, ...)
            "outcome": event.get("outcome") if event.get("outcome") != outcome else None,
            "target": {"type": target_type, "id": target_id},
            "change": {
                "before": _redacted(event.get("before")),
                "after": _redacted(event.get("after")),
            },
        },
    }
    return _prune(doc)
