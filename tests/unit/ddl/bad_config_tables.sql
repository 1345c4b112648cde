-- Feature switches and quotas are runtime configuration: config service / OLTP.
CREATE TABLE feature_flags
(
    tenant_id  String COMMENT 'tenant',
    flag_key   String COMMENT 'flag name',
    enabled    UInt8 COMMENT '1 if on',
    updated_at DateTime COMMENT 'last change'
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (tenant_id, flag_key)
COMMENT 'Feature flags per tenant';

CREATE TABLE tenant_quotas (
    tenant_id          text PRIMARY KEY,
    monthly_send_quota integer NOT NULL,
    burst              integer NOT NULL,
    overrides          jsonb
);
COMMENT ON TABLE tenant_quotas IS 'Per-tenant sending quotas';
