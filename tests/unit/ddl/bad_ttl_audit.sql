-- A payments product's payout audit: narrow and declared, but with a TTL that would
-- delete the records an auditor asks for next year.
CREATE TABLE payout_audit
(
    tenant_id     String COMMENT 'merchant (tenant)',
    event_id      String COMMENT 'id of the payout action',
    occurred_at   DateTime64(3, 'UTC') COMMENT 'when',
    actor_user_id String COMMENT 'who approved or released it',
    action        LowCardinality(String) COMMENT 'approved, held, released',
    payout_id     String COMMENT 'which payout',
    amount_cents  Int64 COMMENT 'amount at the time of the action',
    reason        Nullable(String) COMMENT 'stated reason'
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, occurred_at, event_id)
TTL toDateTime(occurred_at) + INTERVAL 180 DAY
COMMENT 'Audit record of payout approvals and holds';

-- The same mistake as a change to an existing table.
ALTER TABLE refund_audit MODIFY TTL toDateTime(occurred_at) + INTERVAL 1 YEAR;
