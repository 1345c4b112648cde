"""The OLAP catalog: every table Sluice may write, with its grain and key.

Column meanings live in the migration DDL (``COMMENT``) and in ``docs/olap.md``; this is
the runtime guard the writer checks before every insert. A test keeps it equal to the
migrations and to the rows the engine produces.
"""

from __future__ import annotations

from dataclasses import dataclass

from sluice.olap.audit import AUDIT_COLUMNS

_ROW_VERSION = ("updated", "_version")
_CAMPAIGN_METRICS = (
    "sent",
    "delivered",
    "opened_tracked",
    "clicked_tracked",
    "replied",
    "bounced",
    "unsubscribed",
    "spam_complaints",
)


@dataclass(frozen=True)
class OlapTable:
    """A table the worker writes."""

    name: str
    grain: str
    key: tuple[str, ...]
    columns: tuple[str, ...]

    @property
    def value_columns(self) -> tuple[str, ...]:
        """The columns a writer fills besides the key and the row version."""
        return tuple(c for c in self.columns if c not in self.key and c not in _ROW_VERSION)


OLAP_TABLES: dict[str, OlapTable] = {
    t.name: t
    for t in (
        OlapTable(
            name="campaign_analytics",
            grain="per company, campaign and UTC send day",
            key=("company_id", "campaign_id", "day"),
            columns=("company_id", "campaign_id", "day", *_CAMPAIGN_METRICS, *_ROW_VERSION),
        ),
        OlapTable(
            name="mailbox_analytics",
            grain="per company, sending mailbox and UTC send day",
            key=("company_id", "mailbox_id", "day"),
            columns=(
                "company_id",
                "mailbox_id",
                "day",
                *_CAMPAIGN_METRICS[:6],
                "bounced_hard",
                "bounced_soft",
                *_CAMPAIGN_METRICS[6:],
                *_ROW_VERSION,
            ),
        ),
        OlapTable(
            name="sequence_step_analytics",
            grain="per company, campaign, sequence step and UTC send day",
            key=("company_id", "campaign_id", "sequence_step_id", "day"),
            columns=(
                "company_id",
                "campaign_id",
                "sequence_step_id",
                "day",
                *_CAMPAIGN_METRICS,
                *_ROW_VERSION,
            ),
        ),
        OlapTable(
            name="lead_analytics",
            grain="per company and lead (all time)",
            key=("company_id", "lead_id"),
            columns=(
                "company_id",
                "lead_id",
                "emails_sent",
                *_CAMPAIGN_METRICS[1:6],
                "bounced_hard",
                *_CAMPAIGN_METRICS[6:],
                "campaigns",
                "first_sent_day",
                "last_sent_day",
                "status",
                *_ROW_VERSION,
            ),
        ),
        OlapTable(
            name="warmup_analytics",
            grain="per company, warmed-up mailbox and UTC warm-up send day",
            key=("company_id", "mailbox_id", "day"),
            columns=(
                "company_id",
                "mailbox_id",
                "day",
                "warmup_sent",
                "landed",
                "landed_inbox",
                "landed_spam",
                "landed_other",
                "replied",
                "inbox_placement_rate",
                *_ROW_VERSION,
            ),
        ),
        OlapTable(
            name="billing_analytics",
            grain="per company and UTC calendar month",
            key=("company_id", "month"),
            columns=(
                "company_id",
                "month",
                "billable_sends",
                "active_mailboxes",
                "signups",
                "upgrades",
                "downgrades",
                "churns",
                "plan_at_month_end",
                "active_at_month_end",
                *_ROW_VERSION,
            ),
        ),
        OlapTable(
            name="admin_audit_log",
            grain="one row per compliance admin action (compliance record, hash-chained)",
            key=("tenant_id", "seq", "event_id"),
            columns=AUDIT_COLUMNS,
        ),
        OlapTable(
            name="sensitive_access_log",
            grain="one row per sensitive-data access or data export event (compliance record)",
            key=("tenant_id", "event_id"),
            columns=(
                "tenant_id",
                "event_id",
                "occurred_at",
                "kind",
                "actor_user_id",
                "impersonator_user_id",
                "data_scope",
                "record_count",
                "target",
                "approval_of",
                "outcome",
            ),
        ),
        OlapTable(
            name="admin_system_events",
            grain="one row per notable system event or coalesced alert incident",
            key=("tenant_id", "event_key"),
            columns=(
                "tenant_id",
                "event_key",
                "kind",
                "occurred_at",
                "title",
                "severity",
                "status",
                "summary",
                "incident_id",
                "incident_key",
                "maintenance_id",
                "affected_services",
                "started_at",
                "ended_at",
                "alert_name",
                "service",
                "first_seen",
                "last_seen",
                "alert_count",
                "_deleted",
                *_ROW_VERSION,
            ),
        ),
    )
}

# Sluice's own bookkeeping (migration history); never analytics data.
INTERNAL_TABLES: frozenset[str] = frozenset({"sluice_schema_migrations"})
