-- A customer-facing daily aggregate: fine.
CREATE TABLE IF NOT EXISTS tenant_daily_usage
(
    company_id     String COMMENT 'tenant',
    day            Date COMMENT 'UTC day',
    emails_sent    UInt64 COMMENT 'distinct emails sent',
    active_seats   UInt32 COMMENT 'seats used that day',
    _version       UInt64 COMMENT 'row version'
)
ENGINE = ReplacingMergeTree(_version)
PARTITION BY toYYYYMM(day)
ORDER BY (company_id, day);

-- Hour grain through a truncating key: fine too.
CREATE TABLE IF NOT EXISTS tenant_hourly_sends
(
    company_id String COMMENT 'tenant',
    sent_hour  DateTime COMMENT 'hour of the sends',
    sent       UInt64 COMMENT 'emails sent'
)
ENGINE = SummingMergeTree
ORDER BY (company_id, toStartOfHour(sent_hour));

CREATE VIEW IF NOT EXISTS tenant_daily_usage_v AS SELECT * FROM tenant_daily_usage FINAL;
