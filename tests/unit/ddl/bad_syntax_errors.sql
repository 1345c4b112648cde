-- A fine table first.
CREATE TABLE plan_monthly_seats
(
    account_id String COMMENT 'account',
    month      Date COMMENT 'first day of the month',
    seats      UInt32 COMMENT 'paid seats'
)
ENGINE = ReplacingMergeTree
ORDER BY (account_id, month)
COMMENT 'Paid seats per account per month';

-- A missing comma: unreadable in every dialect.
CREATE TABLE plan_daily_seats
(
    account_id String COMMENT 'account'
    day        Date COMMENT 'UTC day',
    seats      UInt32 COMMENT 'paid seats'
)
ENGINE = ReplacingMergeTree
ORDER BY (account_id, day);

-- Checked although the statement above is broken.
CREATE TABLE page_views
(
    page       String COMMENT 'page',
    viewed_at  DateTime COMMENT 'when'
)
ENGINE = MergeTree
ORDER BY (viewed_at);

SELEC count() FROM page_views;
