CREATE TABLE analytics_rate_limits
(
    tenant_id        String COMMENT 'tenant',
    endpoint         String COMMENT 'route',
    limit_per_minute UInt32 COMMENT 'allowed requests per minute',
    burst            UInt32 COMMENT 'burst size'
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, endpoint);
