"""The OLAP catalog: every table Sluice may write, each column once — name, type, meaning.

This is the one source of the warehouse's columns. Everything else is derived from it:
the DDL and the versioned migrations (:mod:`sluice.olap.ddl`, :mod:`sluice.olap.migrations`,
single node or cluster), the ``*_v`` views, the column lists the writer inserts and the
components fill (checked against it when the engine starts), the column reference in
``docs/olap.md`` (regenerated with ``python -m sluice.olap.catalog``; a test keeps it in
sync), and the writer's guard: only tables listed here may ever be written (DESIGN §3).

``since`` is the migration version that created a table or added a column: never change
what a released version renders; add a column with a higher ``since`` instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

UTC_MS = "DateTime64(3, 'UTC')"


@dataclass(frozen=True)
class Column:
    """One column: its ClickHouse type and what it means (the DDL's ``COMMENT``)."""

    name: str
    type: str
    comment: str
    since: int | None = None  # the migration that added it (None: with its table)


UPDATED = Column("updated", UTC_MS, "when the worker last wrote this row")
VERSION = Column("_version", "UInt64", "monotonic row version (source offsets applied); internal")
INTERNAL = frozenset({"_version", "_deleted"})  # never in a view


@dataclass(frozen=True)
class Table:
    """A table the worker writes.

    ``key`` is the row identity (``ORDER BY``): ReplacingMergeTree keeps one row per key,
    the one with the highest ``_version`` when the table is ``versioned`` (rows rewritten
    as their aggregates change; ``updated`` and ``_version`` are appended to the columns),
    else any of identical rewrites (immutable compliance rows). ``deleted`` names the
    ReplacingMergeTree ``is_deleted`` column of tables whose rows can be superseded.
    """

    name: str
    since: int
    grain: str
    sources: str
    key: tuple[str, ...]
    defs: tuple[Column, ...]  # the declared columns (the row-version ones are appended)
    comment: str | None
    partition_by: str | None = None
    versioned: bool = True
    deleted: str | None = None
    view_where: str | None = None
    comment_since: int | None = None  # the migration that set ``comment`` (None: with the table)

    def __post_init__(self) -> None:
        names = list(self.columns)
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: a column is listed twice")
        missing = [k for k in self.key if k not in names]
        if missing:
            raise ValueError(f"{self.name}: key columns {missing} are not columns")
        if self.deleted is not None and self.deleted not in names:
            raise ValueError(f"{self.name}: {self.deleted} is not a column")

    @property
    def definitions(self) -> tuple[Column, ...]:
        """Every column in table order, the row-version columns last."""
        return (*self.defs, UPDATED, VERSION) if self.versioned else self.defs

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column name, in table order (what an insert names)."""
        return tuple(c.name for c in self.definitions)

    @property
    def value_columns(self) -> tuple[str, ...]:
        """The columns a writer fills besides the key and the row version."""
        return tuple(c.name for c in self.defs if c.name not in self.key)

    @property
    def view_columns(self) -> tuple[str, ...]:
        """What the ``<table>_v`` view shows: every column but the internal ones."""
        return tuple(c.name for c in self.definitions if c.name not in INTERNAL)

    @property
    def view(self) -> str:
        return f"{self.name}_v"

    def column(self, name: str) -> Column:
        for c in self.definitions:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")

    def column_since(self, column: Column) -> int:
        return column.since or self.since

    def comment_at(self, version: int | None) -> str | None:
        """The table comment as of migration ``version`` (None: the latest)."""
        if version is not None and (self.comment_since or self.since) > version:
            return None
        return self.comment


# Columns several tables share, word for word (their COMMENT text is part of the DDL).
COMPANY = Column("company_id", "String", "tenant (company) id")
CAMPAIGN = Column("campaign_id", "String", "campaign id, unique within the company")
SEND_DAY = Column("day", "Date", "UTC day of the email_sent event")
DELIVERED = Column("delivered", "UInt64", "of those, distinct emails with an email_delivered")
OPENED = Column(
    "opened_tracked", "UInt64", "of those, distinct emails with at least one tracked open"
)
CLICKED = Column(
    "clicked_tracked", "UInt64", "of those, distinct emails with at least one tracked click"
)
REPLIED = Column("replied", "UInt64", "of those, distinct emails with a reply")
BOUNCED = Column("bounced", "UInt64", "of those, distinct emails that bounced (hard or soft)")
UNSUBSCRIBED = Column(
    "unsubscribed", "UInt64", "of those, distinct emails whose lead unsubscribed from it"
)
SPAM = Column("spam_complaints", "UInt64", "of those, distinct emails reported as spam")
BOUNCED_HARD = Column(
    "bounced_hard", "UInt64", "of those, distinct emails with a hard (permanent) bounce"
)


_TABLES: tuple[Table, ...] = (
    Table(
        name="campaign_analytics",
        since=1,
        grain="per company, campaign and UTC send day",
        sources="events.email (every email_* type), attributed to the campaign and UTC day of the winning email_sent; never warm-up",
        key=("company_id", "campaign_id", "day"),
        defs=(
            COMPANY,
            CAMPAIGN,
            SEND_DAY,
            Column("sent", "UInt64", "distinct emails sent that day (email_sent)"),
            DELIVERED,
            OPENED,
            CLICKED,
            REPLIED,
            BOUNCED,
            UNSUBSCRIBED,
            SPAM,
        ),
        partition_by="toYYYYMM(day)",
        comment="Per campaign per UTC send day email outcomes (distinct emails, the spec's ETL); aggregate, customer-facing analytics",
        comment_since=4,
    ),
    Table(
        name="mailbox_analytics",
        since=2,
        grain="per company, sending mailbox and UTC send day",
        sources="events.email (every email_* type), attributed to the mailbox of email_sent",
        key=("company_id", "mailbox_id", "day"),
        defs=(
            COMPANY,
            Column("mailbox_id", "String", "sending mailbox id (from email_sent)"),
            SEND_DAY,
            Column("sent", "UInt64", "distinct emails this mailbox sent that day (email_sent)"),
            DELIVERED,
            OPENED,
            CLICKED,
            REPLIED,
            Column(
                "bounced",
                "UInt64",
                "of those, distinct emails that bounced (hard, soft or unspecified)",
            ),
            BOUNCED_HARD,
            Column(
                "bounced_soft", "UInt64", "of those, distinct emails with a soft (transient) bounce"
            ),
            UNSUBSCRIBED,
            SPAM,
        ),
        partition_by="toYYYYMM(day)",
        comment="Per mailbox per UTC send day email outcomes (distinct emails); aggregate, customer-facing analytics",
    ),
    Table(
        name="sequence_step_analytics",
        since=2,
        grain="per company, campaign, sequence step and UTC send day",
        sources="events.email; only emails whose email_sent carries a sequence_step_id (the others count in campaign_analytics only)",
        key=("company_id", "campaign_id", "sequence_step_id", "day"),
        defs=(
            COMPANY,
            CAMPAIGN,
            Column(
                "sequence_step_id",
                "String",
                "sequence step that produced the emails (from email_sent)",
            ),
            SEND_DAY,
            Column("sent", "UInt64", "distinct emails of this step sent that day (email_sent)"),
            DELIVERED,
            OPENED,
            CLICKED,
            REPLIED,
            BOUNCED,
            UNSUBSCRIBED,
            SPAM,
        ),
        partition_by="toYYYYMM(day)",
        comment="Per campaign sequence step per UTC send day email outcomes (distinct emails); aggregate analytics",
    ),
    Table(
        name="lead_analytics",
        since=2,
        grain="per company and lead (all time)",
        sources="events.email, attributed to the lead of email_sent; the latest state is a pure function of the lead's emails (order-independent, so exact under replay)",
        key=("company_id", "lead_id"),
        defs=(
            COMPANY,
            Column("lead_id", "String", "lead (recipient contact) id"),
            Column("emails_sent", "UInt64", "distinct emails sent to this lead (email_sent)"),
            DELIVERED,
            OPENED,
            CLICKED,
            Column("replied", "UInt64", "of those, distinct emails the lead replied to"),
            BOUNCED,
            BOUNCED_HARD,
            Column(
                "unsubscribed", "UInt64", "of those, distinct emails the lead unsubscribed from"
            ),
            Column(
                "spam_complaints", "UInt64", "of those, distinct emails the lead reported as spam"
            ),
            Column("campaigns", "UInt64", "distinct campaigns that sent this lead an email"),
            Column(
                "first_sent_day",
                "Nullable(Date)",
                "UTC day of the first email sent to the lead (NULL if none)",
            ),
            Column(
                "last_sent_day",
                "Nullable(Date)",
                "UTC day of the latest email sent to the lead (NULL if none)",
            ),
            Column(
                "status",
                "LowCardinality(String)",
                "latest state: the most decisive outcome of any email, in order spam_complaint, unsubscribed, bounced_hard, replied, clicked, opened, delivered, sent (empty if none)",
            ),
        ),
        comment="Per lead engagement totals (distinct emails) and latest state; aggregate analytics",
    ),
    Table(
        name="warmup_analytics",
        since=2,
        grain="per company, warmed-up mailbox and UTC warm-up send day",
        sources="events.warmup (warmup_email_sent, warmup_email_landed, warmup_email_replied), distinct warm-up email ids whose winning warmup_email_sent falls on the day; placement is the first landing",
        key=("company_id", "mailbox_id", "day"),
        defs=(
            COMPANY,
            Column("mailbox_id", "String", "mailbox being warmed up (from warmup_email_sent)"),
            Column("day", "Date", "UTC day of the warmup_email_sent event"),
            Column("warmup_sent", "UInt64", "distinct warm-up emails sent that day"),
            Column("landed", "UInt64", "of those, distinct emails with a warmup_email_landed"),
            Column(
                "landed_inbox",
                "UInt64",
                "of those, distinct emails whose first landing was the inbox",
            ),
            Column(
                "landed_spam", "UInt64", "of those, distinct emails whose first landing was spam"
            ),
            Column(
                "landed_other",
                "UInt64",
                "of those, distinct emails whose first landing was another folder",
            ),
            Column("replied", "UInt64", "of those, distinct emails the warm-up peer replied to"),
            Column(
                "inbox_placement_rate",
                "Nullable(Float64)",
                "landed_inbox / landed, 0 to 1 (NULL when nothing landed yet)",
            ),
        ),
        partition_by="toYYYYMM(day)",
        comment="Per mailbox per UTC day warm-up placement (distinct warm-up emails); aggregate analytics",
    ),
    Table(
        name="billing_analytics",
        since=2,
        grain="per company and UTC calendar month",
        sources="events.email (email_sent, by the winning send's month) and events.business (signup, upgrade, downgrade, churn: distinct event ids); warm-up is not billable",
        key=("company_id", "month"),
        defs=(
            COMPANY,
            Column("month", "Date", "first day of the UTC calendar month"),
            Column(
                "billable_sends",
                "UInt64",
                "distinct emails sent in the month (email_sent; warm-up excluded)",
            ),
            Column(
                "active_mailboxes",
                "UInt64",
                "distinct mailboxes that sent at least one of those emails",
            ),
            Column("signups", "UInt64", "distinct business_signup events in the month"),
            Column("upgrades", "UInt64", "distinct business_upgrade events in the month"),
            Column("downgrades", "UInt64", "distinct business_downgrade events in the month"),
            Column("churns", "UInt64", "distinct business_churn events in the month"),
            Column(
                "plan_at_month_end",
                "Nullable(String)",
                "plan_to of the last business event before the month ended (earlier months included); NULL if none yet or churned",
            ),
            Column(
                "active_at_month_end",
                "UInt8",
                "1 if the last business event before the month ended is not a churn",
            ),
        ),
        comment="Per company per month billable usage and plan changes; contractual aggregate for billing",
    ),
    Table(
        name="admin_audit_log",
        since=3,
        grain="one row per compliance admin action (compliance record, hash-chained)",
        sources="events.admin_action, the compliance actions of topics.taxonomy.COMPLIANCE_ACTIONS, exactly once per event_id (never admin_setting_toggled / admin_record_viewed); per tenant seq runs 1, 2, 3, ... and row_hash chains the rows (`sluice audit verify`)",
        key=("tenant_id", "seq", "event_id"),
        defs=(
            Column("tenant_id", "String", "tenant (company) the action belongs to"),
            Column("seq", "UInt64", "per-tenant sequence number: 1, 2, 3, ... without gaps"),
            Column(
                "event_id", "String", "event_id of the admin_action event (unique in the table)"
            ),
            Column("occurred_at", UTC_MS, "when the action happened (event time, UTC)"),
            Column(
                "action",
                "LowCardinality(String)",
                "what: the compliance event type, e.g. admin_role_changed",
            ),
            Column(
                "actor_user_id",
                "Nullable(String)",
                "who: the user the action was taken as (user_id)",
            ),
            Column(
                "impersonator_user_id",
                "Nullable(String)",
                "as whom: the admin actually acting when impersonating, else NULL",
            ),
            Column(
                "target_type",
                "Nullable(String)",
                "kind of object acted on, e.g. user, role, tenant, subscription, export",
            ),
            Column("target_id", "Nullable(String)", "id of the object acted on"),
            Column(
                "before_summary",
                "String",
                "JSON object (sorted keys) of the relevant state before; secret-looking values replaced by [redacted]",
            ),
            Column(
                "after_summary",
                "String",
                "JSON object (sorted keys) of the relevant state after; secret-looking values replaced by [redacted]",
            ),
            Column("reason", "Nullable(String)", "stated reason or ticket reference"),
            Column("source", "String", "producing service"),
            Column(
                "prev_hash",
                "String",
                "row_hash of the previous seq of this tenant (64 zeros for seq 1)",
            ),
            Column(
                "row_hash",
                "String",
                "sha256 hex of the canonical serialization of this row including prev_hash",
            ),
        ),
        comment="Compliance audit log of high-risk admin actions, hash-chained per tenant; insert-only; long retention, no TTL",
        versioned=False,
    ),
    Table(
        name="sensitive_access_log",
        since=3,
        grain="one row per sensitive-data access or data export event (compliance record)",
        sources="events.security security_data_access that is sensitive or touches personal/contractual data, and events.admin_action admin_data_export_requested / admin_data_export_approved; detailed access logs stay in the SIEM",
        key=("tenant_id", "event_id"),
        defs=(
            Column("tenant_id", "String", "tenant (company) whose data was accessed or exported"),
            Column("event_id", "String", "event_id of the source event (one row each)"),
            Column("occurred_at", UTC_MS, "when the access or export action happened (UTC)"),
            Column(
                "kind", "LowCardinality(String)", "data_access, export_requested or export_approved"
            ),
            Column(
                "actor_user_id",
                "Nullable(String)",
                "user who accessed the data or acted on the export",
            ),
            Column(
                "impersonator_user_id",
                "Nullable(String)",
                "admin actually acting when impersonating (exports), else NULL",
            ),
            Column("data_scope", "Nullable(String)", "kind of data, e.g. pii, billing, contacts"),
            Column(
                "record_count",
                "Nullable(Int64)",
                "number of records accessed or exported, when known",
            ),
            Column(
                "target",
                "Nullable(String)",
                "what was accessed (resource) or exported (target_type:target_id)",
            ),
            Column(
                "approval_of",
                "Nullable(String)",
                "on export_approved: event_id of the approved export request",
            ),
            Column("outcome", "Nullable(String)", "on data_access: success, failure or blocked"),
        ),
        comment="Compliance record of sensitive-data access and PII exports (narrow); insert-only; long retention, no TTL",
        versioned=False,
    ),
    Table(
        name="admin_system_events",
        since=3,
        grain="one row per notable system event or coalesced alert incident",
        sources="events.system (one row per incident opened/resolved and maintenance completed) and events.infra infra_alert coalesced per incident_key, else per (alert_name, service) storm split by 30-minute gaps; a superseded storm row is a tombstone (_deleted = 1)",
        key=("tenant_id", "event_key"),
        defs=(
            Column("tenant_id", "String", "tenant the event or alerts were reported for"),
            Column(
                "event_key",
                "String",
                "row identity: event:<event_id>, incident:<incident_key> or storm:[alert_name, service, first_seen_ms]",
            ),
            Column(
                "kind",
                "LowCardinality(String)",
                "incident_opened, incident_resolved, maintenance_completed or alert_storm",
            ),
            Column("occurred_at", UTC_MS, "event time (alert storms: first alert)"),
            Column(
                "title",
                "Nullable(String)",
                "short human title (alert storms: the first alert name)",
            ),
            Column(
                "severity",
                "Nullable(String)",
                "severity of the event (alert storms: highest alert severity)",
            ),
            Column("status", "Nullable(String)", "incident or maintenance status as reported"),
            Column("summary", "Nullable(String)", "human summary as reported (no secrets, no PII)"),
            Column("incident_id", "Nullable(String)", "incident the event is about"),
            Column(
                "incident_key",
                "Nullable(String)",
                "alert incident_key the row summarizes, when there is one",
            ),
            Column(
                "maintenance_id", "Nullable(String)", "maintenance window (maintenance_completed)"
            ),
            Column(
                "affected_services",
                "Array(String)",
                "services affected (alert storms: distinct alerting services)",
            ),
            Column(
                "started_at",
                "Nullable(DateTime64(3, 'UTC'))",
                "when the incident or maintenance started, as reported",
            ),
            Column(
                "ended_at",
                "Nullable(DateTime64(3, 'UTC'))",
                "when the incident or maintenance ended, as reported",
            ),
            Column("alert_name", "Nullable(String)", "alert storms: alert rule of the first alert"),
            Column("service", "Nullable(String)", "alert storms: service of the first alert"),
            Column(
                "first_seen",
                "Nullable(DateTime64(3, 'UTC'))",
                "alert storms: time of the first alert",
            ),
            Column(
                "last_seen",
                "Nullable(DateTime64(3, 'UTC'))",
                "alert storms: time of the last alert",
            ),
            Column(
                "alert_count",
                "UInt64",
                "alert storms: distinct alerts coalesced (other rows: as reported, else 0)",
            ),
            Column(
                "_deleted", "UInt8", "1 on a superseded alert-storm row (hidden by FINAL); internal"
            ),
        ),
        comment="Notable system events and incidents (alert storms coalesced), one row per notable event; insert-only, no TTL",
        deleted="_deleted",
        view_where="_deleted = 0",
    ),
)

OLAP_TABLES: Mapping[str, Table] = MappingProxyType({t.name: t for t in _TABLES})

# Sluice's own bookkeeping (migration history, the migration lock); never analytics data.
INTERNAL_TABLES: frozenset[str] = frozenset({"sluice_schema_migrations", "sluice_migration_lock"})


def reference_markdown() -> str:
    """The column reference of docs/olap.md (between its ``catalog`` markers)."""
    out = []
    for t in _TABLES:
        out.append(f"### `{t.name}`\n")
        out.append(f"One row {t.grain}. Key: `{', '.join(t.key)}`. Read it as `{t.view}`.\n")
        out.append(f"Source events: {t.sources}.\n")
        out.append("| column | type | meaning |\n|---|---|---|")
        for c in t.definitions:
            meaning = c.comment.replace("|", "\\|")
            out.append(f"| `{c.name}` | `{c.type}` | {meaning} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(reference_markdown())
