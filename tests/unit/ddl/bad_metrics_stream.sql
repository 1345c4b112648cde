-- Per-host samples every 10 s: a metrics stream for Prometheus/OTel, not OLAP.
CREATE TABLE service_metrics
(
    ts             DateTime COMMENT 'sample time',
    service        LowCardinality(String) COMMENT 'service name',
    host           LowCardinality(String) COMMENT 'host name',
    cpu_usage      Float32 COMMENT 'cores used',
    memory_rss     UInt64 COMMENT 'resident memory, bytes',
    p99_latency_ms Float32 COMMENT 'p99 request latency',
    error_rate     Float32 COMMENT 'errors per request'
)
ENGINE = MergeTree
ORDER BY (service, host, ts)
COMMENT 'Service health samples';
