-- Narrow, and named audit, but it records email opens, not a compliance action: no
-- column says who acted or what was done.
CREATE TABLE email_open_audit
(
    tenant_id   String COMMENT 'sender (tenant)',
    event_id    String COMMENT 'open event id',
    occurred_at DateTime64(3, 'UTC') COMMENT 'when the pixel loaded',
    email_id    String COMMENT 'which email',
    campaign_id String COMMENT 'which campaign'
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, occurred_at, event_id)
COMMENT 'Open audit';
