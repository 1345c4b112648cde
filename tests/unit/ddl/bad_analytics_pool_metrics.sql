CREATE TABLE IF NOT EXISTS analytics_pool_metrics
(
    sampled_at   DateTime64(3, 'UTC') COMMENT 'sample time',
    node         String COMMENT 'host',
    pool_size    UInt32 COMMENT 'size',
    pool_in_use  UInt32 COMMENT 'in use',
    queue_depth  UInt32 COMMENT 'waiting',
    cpu_percent  Float64 COMMENT 'cpu',
    memory_bytes UInt64 COMMENT 'rss'
)
ENGINE = MergeTree
ORDER BY (node, sampled_at);
