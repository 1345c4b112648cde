CREATE TABLE invoice_monthly_totals
(
    account_id     String,
    month          Date,
    invoices       UInt32,
    amount_cents   Int64,
    overdue        UInt32,
    _version       UInt64
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY (account_id, month);

CREATE TABLE daily_signups (
    day     date NOT NULL,
    region  text NOT NULL,
    plan    text NOT NULL,
    signups integer NOT NULL DEFAULT 0,
    PRIMARY KEY (day, region, plan)
);
