-- One row per checkout attempt, for nobody's records: a log by another name.
CREATE TABLE checkout_requests
(
    request_id     String COMMENT 'checkout attempt id',
    store_id       String COMMENT 'store (tenant) id',
    started_at     DateTime64(3) COMMENT 'when the attempt started',
    cart_cents     UInt64 COMMENT 'cart value',
    payment_method LowCardinality(String) COMMENT 'card, wallet, invoice',
    succeeded      UInt8 COMMENT '1 if paid'
)
ENGINE = ReplacingMergeTree
ORDER BY (store_id, started_at, request_id)
COMMENT 'Checkout attempts';
