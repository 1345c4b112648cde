-- a log of things admins did
CREATE TABLE sensitive_access_log
(
    tenant_id String COMMENT 'tenant',
    event_id  String COMMENT 'event',
    kind      String COMMENT 'what'
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, event_id);
