-- Spec §3.3 allows an aggregated capacity summary for business reporting.
CREATE TABLE monthly_plan_summary
(
    company_id     String COMMENT 'tenant',
    month          Date COMMENT 'first day of the month',
    plan           LowCardinality(String) COMMENT 'plan at month end',
    seats          UInt32 COMMENT 'paid seats at month end'
)
ENGINE = ReplacingMergeTree
ORDER BY (company_id, month);
