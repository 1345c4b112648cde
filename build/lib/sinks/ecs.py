"""Security events as Elastic Common Schema (ECS) documents, for the SIEM (pure).

The SIEM is the one destination that gets PII (IPs, user agents) in clear text: it is
where forensics happen. It never gets secrets: keys of before/after maps that look like
credentials are redacted. Fields ECS has no name for live under ``sluice.*`` (ECS says
custom fields go in their own namespace).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

ECS_VERSION = "8.11.0"


@dataclass(frozen=True)
class EcsKind:
    """How one event type is categorised (ECS ``event.kind/category/type``)."""

    category: tuple[str, ...]
    type: tuple[str, ...]
    kind: str = "event"
    outcome: str | None = None  # when the event type implies it
    severity: int = 5  # syslog severity (RFC 5424): 5 notice, 4 warning, 2 critical


_IAM_CHANGE = EcsKind(("iam",), ("change",))
ECS_KINDS: Mapping[str, EcsKind] = MappingProxyType(
    {
        "security_login_succeeded": EcsKind(
            ("authentication",), ("start",), outcome="success", severity=6
        ),
        "security_login_failed": EcsKind(
            ("authentication",), ("start",), outcome="failure", severity=4
        ),
        "security_suspicious_activity": EcsKind(
            ("intrusion_detection",), ("indicator",), kind="alert", severity=2
        ),
        "security_data_access": EcsKind(("database",), ("access",)),
        "admin_role_changed": _IAM_CHANGE,
        "admin_permission_changed": _IAM_CHANGE,
        "admin_data_export_requested": EcsKind(("database",), ("access",)),
        "admin_data_export_approved": EcsKind(("database",), ("access", "allowed")),
        "admin_impersonation_started": EcsKind(("iam", "session"), ("start", "admin"), severity=4),
        "admin_account_locked": EcsKind(("iam",), ("user", "change"), severity=4),
        "admin_account_deleted": EcsKind(("iam",), ("user", "deletion"), severity=4),
    }
)

_SECRET_KEY = re.compile(r"pass|secret|token|api[_-]?key|credential|private|otp|session", re.I)


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


def _prune(value: Any) -> Any:
    """Drop None values and empty objects, recursively."""
    if isinstance(value, dict):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v is not None and v != {}}
    return value


def to_ecs(event: Mapping[str, Any]) -> dict[str, Any]:
    """One decoded security or admin event → one ECS document (idempotency key: event.id)."""
    event_type = event["event_type"]
    kind = ECS_KINDS[event_type]
    outcome = kind.outcome or event.get("outcome") or "unknown"
    actor = event.get("impersonator_user_id")
    target_type, target_id = event.get("target_type"), event.get("target_id")
    doc = {
        "@timestamp": _iso(event["occurred_at"]),
        "ecs": {"version": ECS_VERSION},
        "event": {
            "id": event["event_id"],
            "kind": kind.kind,
            "category": list(kind.category),
            "type": list(kind.type),
            "action": event_type,
            "outcome": outcome if outcome in {"success", "failure", "unknown"} else "unknown",
            "dataset": "sluice.kafka" if event_type.startswith("security_") else "sluice.admin",
            "provider": event.get("source"),
            "reason": event.get("failure_reason") or event.get("reason"),
            "risk_score": event.get("risk_score"),
            "severity": kind.severity,
        },
        "organization": {"id": event.get("tenant_id")},
        # Impersonation: the real actor is user.id, the account acted as is user.effective.
        "user": {
            "id": actor or event.get("user_id"),
            "effective": {"id": event.get("user_id")} if actor else None,
            "target": {"id": target_id} if target_type in {"user", "account"} else None,
        },
        "source": {
            "ip": event.get("ip_address"),
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
            "target": {"type": target_type, "id": target_id},
            "change": {
                "before": _redacted(event.get("before")),
                "after": _redacted(event.get("after")),
            },
        },
    }
    return _prune(doc)
