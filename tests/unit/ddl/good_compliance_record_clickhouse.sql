-- An HR product (not Sluice's): who opened or exported an employee's personal record.
CREATE TABLE IF NOT EXISTS hr_record_access_audit
(
    tenant_id            String COMMENT 'customer (tenant) id',
    event_id             String COMMENT 'id of the access event; one row each',
    occurred_at          DateTime64(3, 'UTC') COMMENT 'when the record was opened or exported',
    actor_user_id        String COMMENT 'who opened it',
    impersonator_user_id Nullable(String) COMMENT 'support admin acting as the actor, if any',
    action               LowCardinality(String) COMMENT 'viewed, exported or printed',
    record_type          LowCardinality(String) COMMENT 'payroll, medical, review',
    record_id            String COMMENT 'which employee record',
    data_scope           LowCardinality(String) COMMENT 'pii, salary, health',
    outcome              LowCardinality(String) COMMENT 'allowed or denied',
    justification        Nullable(String) COMMENT 'ticket or stated reason'
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, occurred_at, event_id)
COMMENT 'Compliance record of sensitive access to employee records; long retention, no TTL';
