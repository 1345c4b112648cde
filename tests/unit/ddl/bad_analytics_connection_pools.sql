-- Spec §3.3: connection pool configuration is runtime config, not analytics.
CREATE TABLE IF NOT EXISTS analytics_connection_pools
(
    pool_name       String COMMENT 'pool',
    max_connections UInt32 COMMENT 'configured maximum',
    min_connections UInt32 COMMENT 'configured minimum',
    updated_at      DateTime COMMENT 'last change'
)
ENGINE = ReplacingMergeTree
ORDER BY (pool_name);
