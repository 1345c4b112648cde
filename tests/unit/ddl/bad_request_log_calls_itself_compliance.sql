-- An API gateway's request log that calls itself compliance: every request, with the
-- request details. Narrow it is not: it belongs to the SIEM / observability.
CREATE TABLE api_request_log
(
    request_id      String COMMENT 'gateway request id',
    tenant_id       String COMMENT 'customer (tenant) id',
    user_id         Nullable(String) COMMENT 'caller',
    occurred_at     DateTime64(3, 'UTC') COMMENT 'when the request arrived',
    method          LowCardinality(String) COMMENT 'HTTP method',
    path            String COMMENT 'request path',
    status_code     UInt16 COMMENT 'HTTP status returned',
    latency_ms      Float64 COMMENT 'time to first byte',
    user_agent      String COMMENT 'client user agent',
    ip_address      IPv6 COMMENT 'client address',
    request_headers Map(String, String) COMMENT 'headers as received',
    query_params    String COMMENT 'url query string',
    response_bytes  UInt64 COMMENT 'size of the response'
)
ENGINE = MergeTree
ORDER BY (tenant_id, occurred_at, request_id)
COMMENT 'Compliance log of every API request, kept for audits';
