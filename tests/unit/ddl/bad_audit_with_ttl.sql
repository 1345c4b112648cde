CREATE TABLE admin_audit_log
(
    tenant_id String COMMENT 'tenant',
    seq       UInt64 COMMENT 'sequence',
    action    String COMMENT 'what',
    actor     String COMMENT 'who',
    occurred_at DateTime64(3, 'UTC') COMMENT 'when'
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, seq)
TTL toDateTime(occurred_at) + INTERVAL 90 DAY
COMMENT 'compliance audit log';
