CREATE TABLE campaign_totals
(
    company_id String COMMENT 'tenant',
    sent       UInt64 COMMENT 'emails sent'
)
ENGINE = MergeTree
ORDER BY tuple();
