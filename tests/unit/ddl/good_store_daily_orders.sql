-- A marketplace's merchant dashboard (not Sluice's): orders per merchant, country and
-- UTC day. SummingMergeTree adds the counters of rows that share the key.
CREATE TABLE IF NOT EXISTS store_daily_orders
(
    merchant_id   String COMMENT 'merchant (tenant) id',
    country       LowCardinality(String) COMMENT 'ISO 3166 country of the shipping address',
    day           Date COMMENT 'UTC day the order was placed',
    orders        UInt64 COMMENT 'orders placed',
    revenue_cents UInt64 COMMENT 'gross order value, cents',
    refunds       UInt64 COMMENT 'orders refunded since'
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (merchant_id, country, day)
COMMENT 'Per merchant, country and UTC day order totals; customer-facing analytics';

CREATE VIEW IF NOT EXISTS store_daily_orders_v AS
SELECT merchant_id, country, day, sum(orders) AS orders, sum(revenue_cents) AS revenue_cents,
       sum(refunds) AS refunds
FROM store_daily_orders
GROUP BY merchant_id, country, day;

INSERT INTO store_daily_orders (merchant_id, country, day, orders, revenue_cents, refunds)
VALUES ('m-1', 'DE', '2026-11-01', 3, 12900, 0);
