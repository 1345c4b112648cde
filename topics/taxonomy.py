"""The event taxonomy (DESIGN §2): which event types exist and in which family.

Event type names are a contract: add types, never rename. Each family has one Kafka topic
(see :mod:`topics.catalog`) and one Avro record schema (see :mod:`avro_schemas`).
"""

from __future__ import annotations

from types import MappingProxyType

EVENT_TYPES: MappingProxyType[str, frozenset[str]] = MappingProxyType(
    {
        "email": frozenset(
            {
                "email_sent",
                "email_delivered",
                "email_opened",
                "email_clicked",
                "email_replied",
                "email_bounced",
                "email_unsubscribed",
                "email_spam_complaint",
            }
        ),
        "warmup": frozenset({"warmup_email_sent", "warmup_email_landed", "warmup_email_replied"}),
        "security": frozenset(
            {
                "security_login_succeeded",
                "security_login_failed",
                "security_suspicious_activity",
                "security_data_access",
            }
        ),
        "infra": frozenset(
            {
                "infra_connection_pool_metrics",
                "infra_error_rate",
                "infra_latency",
                "infra_health_check",
                "infra_autoscaling",
                "infra_alert",
                "query_executed",
            }
        ),
        "system": frozenset(
            {
                "system_incident_opened",
                "system_incident_resolved",
                "system_maintenance_completed",
            }
        ),
        "business": frozenset(
            {"business_signup", "business_upgrade", "business_downgrade", "business_churn"}
        ),
        "admin_ui": frozenset(
            {
                "admin_ui_viewed",
                "admin_button_clicked",
                "admin_filter_changed",
                "admin_session_keepalive",
            }
        ),
        "admin_action": frozenset(
            {
                # compliance actions: each one becomes exactly one admin_audit_log row
                "admin_role_changed",
                "admin_permission_changed",
                "admin_tenant_config_changed",
                "admin_billing_changed",
                "admin_subscription_changed",
                "admin_data_export_requested",
                "admin_data_export_approved",
                "admin_impersonation_started",
                "admin_account_locked",
                "admin_account_deleted",
                # a lead's right to be forgotten (GDPR Art. 17, CCPA): docs/erasure.md
                "admin_lead_erasure_requested",
                # low-risk actions: product analytics only, never the audit log
                "admin_setting_toggled",
                "admin_record_viewed",
            }
        ),
    }
)

FAMILIES: tuple[str, ...] = tuple(EVENT_TYPES)

COMPLIANCE_ACTIONS: frozenset[str] = EVENT_TYPES["admin_action"] - {
    "admin_setting_toggled",
    "admin_record_viewed",
}

#: The compliance action that erases one lead everywhere Sluice put it (target_type
#: ``lead``, target_id the lead id): :mod:`sluice.privacy`, docs/erasure.md.
LEAD_ERASURE = "admin_lead_erasure_requested"

FAMILY_OF: MappingProxyType[str, str] = MappingProxyType(
    {event_type: family for family, types in EVENT_TYPES.items() for event_type in types}
)


def family_of(event_type: str) -> str | None:
    """Return the family an event type belongs to, or None if it is not in the taxonomy."""
    return FAMILY_OF.get(event_type)
