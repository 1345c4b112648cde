-- Compliance records and system-event summaries (DESIGN §3, spec §3.1, §3.2, §3.4).
-- These are the only OLAP tables with one row per event, and only because each row is a
-- compliance fact or a notable event, not telemetry. No TTL on any of them: compliance
-- records are kept for the long term, and deleting them is a governance decision taken
-- outside Sluice. The worker only ever INSERTs (grant it INSERT and SELECT, never ALTER,
-- UPDATE or DELETE); a superseded summary row is replaced by a newer version, not deleted.

-- admin_audit_log: one row per compliance admin action (sluice.taxonomy.COMPLIANCE_ACTIONS),
-- exactly once per event_id, never for admin_setting_toggled / admin_record_viewed.
-- Source events: events.admin_action. Tamper-evident: per tenant, seq runs 1, 2, 3, ...
-- without gaps, and row_hash = sha256 of the canonical row (sluice.audit.canonical)
-- including prev_hash, the previous row's row_hash. `sluice audit verify` checks the chain.
-- event_id is part of the key so that a row claiming a taken seq never replaces the
-- original (rewrites of the same row, after a crash, still collapse).
CREATE TABLE IF NOT EXISTS admin_audit_log
(
    tenant_id            String COMMENT 'tenant (company) the action belongs to',
    seq                  UInt64 COMMENT 'per-tenant sequence number: 1, 2, 3, ... without gaps',
    event_id             String COMMENT 'event_id of the admin_action event (unique in the table)',
    occurred_at          DateTime64(3, 'UTC') COMMENT 'when the action happened (event time, UTC)',
    action               LowCardinality(String) COMMENT 'what: the compliance event type, e.g. admin_role_changed',
    actor_user_id        Nullable(String) COMMENT 'who: the user the action was taken as (user_id)',
    impersonator_user_id Nullable(String) COMMENT 'as whom: the admin actually acting when impersonating, else NULL',
    target_type          Nullable(String) COMMENT 'kind of object acted on, e.g. user, role, tenant, subscription, export',
    target_id            Nullable(String) COMMENT 'id of the object acted on',
    before_summary       String COMMENT 'JSON object (sorted keys) of the relevant state before; secret-looking values replaced by [redacted]',
    after_summary        String COMMENT 'JSON object (sorted keys) of the relevant state after; secret-looking values replaced by [redacted]',
    reason               Nullable(String) COMMENT 'stated reason or ticket reference',
    source               String COMMENT 'producing service',
    prev_hash            String COMMENT 'row_hash of the previous seq of this tenant (64 zeros for seq 1)',
    row_hash             String COMMENT 'sha256 hex of the canonical serialization of this row including prev_hash'
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, seq, event_id)
SETTINGS non_replicated_deduplication_window = 10000
COMMENT 'Compliance audit log of high-risk admin actions, hash-chained per tenant; insert-only; long retention, no TTL';

CREATE VIEW IF NOT EXISTS admin_audit_log_v AS
SELECT tenant_id, seq, event_id, occurred_at, action, actor_user_id, impersonator_user_id,
       target_type, target_id, before_summary, after_summary, reason, source, prev_hash, row_hash
FROM admin_audit_log FINAL;

-- sensitive_access_log: the narrow, long-retention record of sensitive-data access and
-- data exports (spec §3.4), one row per event_id. Source events: events.security
-- security_data_access with sensitive = true or a personal/contractual data_scope
-- (streams.compliance.SENSITIVE_SCOPES), and events.admin_action
-- admin_data_export_requested / admin_data_export_approved. Detailed per-query access
-- logs stay in the SIEM.
CREATE TABLE IF NOT EXISTS sensitive_access_log
(
    tenant_id            String COMMENT 'tenant (company) whose data was accessed or exported',
    event_id             String COMMENT 'event_id of the source event (one row each)',
    occurred_at          DateTime64(3, 'UTC') COMMENT 'when the access or export action happened (UTC)',
    kind                 LowCardinality(String) COMMENT 'data_access, export_requested or export_approved',
    actor_user_id        Nullable(String) COMMENT 'user who accessed the data or acted on the export',
    impersonator_user_id Nullable(String) COMMENT 'admin actually acting when impersonating (exports), else NULL',
    data_scope           Nullable(String) COMMENT 'kind of data, e.g. pii, billing, contacts',
    record_count         Nullable(Int64) COMMENT 'number of records accessed or exported, when known',
    target               Nullable(String) COMMENT 'what was accessed (resource) or exported (target_type:target_id)',
    approval_of          Nullable(String) COMMENT 'on export_approved: event_id of the approved export request',
    outcome              Nullable(String) COMMENT 'on data_access: success, failure or blocked'
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, event_id)
SETTINGS non_replicated_deduplication_window = 10000
COMMENT 'Compliance record of sensitive-data access and PII exports (narrow); insert-only; long retention, no TTL';

CREATE VIEW IF NOT EXISTS sensitive_access_log_v AS
SELECT tenant_id, event_id, occurred_at, kind, actor_user_id, impersonator_user_id,
       data_scope, record_count, target, approval_of, outcome
FROM sensitive_access_log FINAL;

-- admin_system_events: one row per notable event or incident, never one per alert.
-- Source events: events.system (system_incident_opened, system_incident_resolved,
-- system_maintenance_completed: one row each, event_key event:<event_id>) and
-- events.infra infra_alert, coalesced: alerts sharing an incident_key are one incident
-- (event_key incident:<key>); alerts without one are grouped by (alert_name, service) and
-- split where consecutive alerts are more than 30 minutes apart (event_key
-- storm:[alert_name, service, first_seen_ms]). alert_count counts distinct alert
-- event_ids. A storm row whose key changes when late alerts merge storms is superseded
-- by a tombstone (_deleted = 1) that FINAL and the view hide.
CREATE TABLE IF NOT EXISTS admin_system_events
(
    tenant_id         String COMMENT 'tenant the event or alerts were reported for',
    event_key         String COMMENT 'row identity: event:<event_id>, incident:<incident_key> or storm:[alert_name, service, first_seen_ms]',
    kind              LowCardinality(String) COMMENT 'incident_opened, incident_resolved, maintenance_completed or alert_storm',
    occurred_at       DateTime64(3, 'UTC') COMMENT 'event time (alert storms: first alert)',
    title             Nullable(String) COMMENT 'short human title (alert storms: the first alert name)',
    severity          Nullable(String) COMMENT 'severity of the event (alert storms: highest alert severity)',
    status            Nullable(String) COMMENT 'incident or maintenance status as reported',
    summary           Nullable(String) COMMENT 'human summary as reported (no secrets, no PII)',
    incident_id       Nullable(String) COMMENT 'incident the event is about',
    incident_key      Nullable(String) COMMENT 'alert incident_key the row summarizes, when there is one',
    maintenance_id    Nullable(String) COMMENT 'maintenance window (maintenance_completed)',
    affected_services Array(String) COMMENT 'services affected (alert storms: distinct alerting services)',
    started_at        Nullable(DateTime64(3, 'UTC')) COMMENT 'when the incident or maintenance started, as reported',
    ended_at          Nullable(DateTime64(3, 'UTC')) COMMENT 'when the incident or maintenance ended, as reported',
    alert_name        Nullable(String) COMMENT 'alert storms: alert rule of the first alert',
    service           Nullable(String) COMMENT 'alert storms: service of the first alert',
    first_seen        Nullable(DateTime64(3, 'UTC')) COMMENT 'alert storms: time of the first alert',
    last_seen         Nullable(DateTime64(3, 'UTC')) COMMENT 'alert storms: time of the last alert',
    alert_count       UInt64 COMMENT 'alert storms: distinct alerts coalesced (other rows: as reported, else 0)',
    _deleted          UInt8 COMMENT '1 on a superseded alert-storm row (hidden by FINAL); internal',
    updated           DateTime64(3, 'UTC') COMMENT 'when the worker last wrote this row',
    _version          UInt64 COMMENT 'monotonic row version (source offsets applied); internal'
)
ENGINE = ReplacingMergeTree(_version, _deleted)
ORDER BY (tenant_id, event_key)
SETTINGS non_replicated_deduplication_window = 10000
COMMENT 'Notable system events and incidents (alert storms coalesced), one row per notable event; insert-only, no TTL';

CREATE VIEW IF NOT EXISTS admin_system_events_v AS
SELECT tenant_id, event_key, kind, occurred_at, title, severity, status, summary, incident_id,
       incident_key, maintenance_id, affected_services, started_at, ended_at, alert_name,
       service, first_seen, last_seen, alert_count, updated
FROM admin_system_events FINAL
WHERE _deleted = 0;
