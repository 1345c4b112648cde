-- a log of things admins did
-- (was sensitive_access_log: under the purpose-and-narrowness rules that name itself
-- declares spec §3.4's purpose, so the case is now a table that declares none)
CREATE TABLE admin_actions
(
    tenant_id String COMMENT 'tenant',
    event_id  String COMMENT 'event',
    kind      String COMMENT 'what'
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, event_id);
