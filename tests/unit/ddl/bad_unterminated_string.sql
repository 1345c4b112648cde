CREATE TABLE seat_changes_daily
(
    account_id String COMMENT 'account',
    day        Date COMMENT 'UTC day',
    changes    UInt32 COMMENT 'seat changes'
)
ENGINE = SummingMergeTree
ORDER BY (account_id, day)
COMMENT 'Seat changes per account per day';

CREATE TABLE seat_changes_hourly
(
    account_id String COMMENT 'the account,
    hour       DateTime COMMENT 'hour'
)
ENGINE = SummingMergeTree
ORDER BY (account_id, toStartOfHour(hour));
