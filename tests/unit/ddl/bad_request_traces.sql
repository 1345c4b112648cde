CREATE TABLE request_traces
(
    trace_id   String COMMENT 'trace',
    span_id    String COMMENT 'span',
    payload    String COMMENT 'raw request body',
    latency_ms Float64 COMMENT 'latency'
)
ENGINE = MergeTree
ORDER BY (trace_id, span_id);
