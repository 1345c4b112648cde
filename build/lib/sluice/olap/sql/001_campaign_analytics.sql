-- campaign_analytics: one row per (company, campaign, UTC send day).
-- Grain: the emails of campaign `campaign_id` whose winning `email_sent` happened on `day`.
-- Every metric counts DISTINCT emails of that grain having at least one event of the kind,
-- whenever the event arrived (an open three days later updates the send day's row).
-- Source events: events.email (email_sent, email_delivered, email_opened, email_clicked,
-- email_replied, email_bounced, email_unsubscribed, email_spam_complaint). Never warmup.
-- Rows are absolute values rewritten by the worker: ReplacingMergeTree keeps the row with
-- the highest _version (the source partition's applied offset), so a replayed flush changes
-- nothing. Read it with FINAL, or through the view campaign_analytics_v.
CREATE TABLE IF NOT EXISTS campaign_analytics
(
    company_id      String COMMENT 'tenant (company) id',
    campaign_id     String COMMENT 'campaign id, unique within the company',
    day             Date COMMENT 'UTC day of the email_sent event',
    sent            UInt64 COMMENT 'distinct emails sent that day (email_sent)',
    delivered       UInt64 COMMENT 'of those, distinct emails with an email_delivered',
    opened_tracked  UInt64 COMMENT 'of those, distinct emails with at least one tracked open',
    clicked_tracked UInt64 COMMENT 'of those, distinct emails with at least one tracked click',
    replied         UInt64 COMMENT 'of those, distinct emails with a reply',
    bounced         UInt64 COMMENT 'of those, distinct emails that bounced (hard or soft)',
    unsubscribed    UInt64 COMMENT 'of those, distinct emails whose lead unsubscribed from it',
    spam_complaints UInt64 COMMENT 'of those, distinct emails reported as spam',
    updated         DateTime64(3, 'UTC') COMMENT 'when the worker last wrote this row',
    _version        UInt64 COMMENT 'monotonic row version (source offsets applied); internal'
)
ENGINE = ReplacingMergeTree(_version)
PARTITION BY toYYYYMM(day)
ORDER BY (company_id, campaign_id, day)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE VIEW IF NOT EXISTS campaign_analytics_v AS
SELECT company_id, campaign_id, day, sent, delivered, opened_tracked, clicked_tracked,
       replied, bounced, unsubscribed, spam_complaints, updated
FROM campaign_analytics FINAL;
