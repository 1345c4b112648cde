-- The other analytics tables fed from attribution state (DESIGN §3, spec §4.2).
-- Same contract as campaign_analytics: rows are absolute values rewritten by the worker;
-- ReplacingMergeTree keeps the row with the highest _version (the source partition's
-- applied offsets), so a replayed flush changes nothing. Read them with FINAL, or through
-- the *_v views. Wherever emails are counted, a metric counts DISTINCT emails: those whose
-- winning email_sent falls in the row's grain and that have at least one event of the
-- kind, whenever that event arrived. Warm-up emails never count in the email tables.

-- mailbox_analytics: one row per (company, sending mailbox, UTC send day).
-- Source events: events.email (all email_* types), attributed to the mailbox of email_sent.
CREATE TABLE IF NOT EXISTS mailbox_analytics
(
    company_id      String COMMENT 'tenant (company) id',
    mailbox_id      String COMMENT 'sending mailbox id (from email_sent)',
    day             Date COMMENT 'UTC day of the email_sent event',
    sent            UInt64 COMMENT 'distinct emails this mailbox sent that day (email_sent)',
    delivered       UInt64 COMMENT 'of those, distinct emails with an email_delivered',
    opened_tracked  UInt64 COMMENT 'of those, distinct emails with at least one tracked open',
    clicked_tracked UInt64 COMMENT 'of those, distinct emails with at least one tracked click',
    replied         UInt64 COMMENT 'of those, distinct emails with a reply',
    bounced         UInt64 COMMENT 'of those, distinct emails that bounced (hard, soft or unspecified)',
    bounced_hard    UInt64 COMMENT 'of those, distinct emails with a hard (permanent) bounce',
    bounced_soft    UInt64 COMMENT 'of those, distinct emails with a soft (transient) bounce',
    unsubscribed    UInt64 COMMENT 'of those, distinct emails whose lead unsubscribed from it',
    spam_complaints UInt64 COMMENT 'of those, distinct emails reported as spam',
    updated         DateTime64(3, 'UTC') COMMENT 'when the worker last wrote this row',
    _version        UInt64 COMMENT 'monotonic row version (source offsets applied); internal'
)
ENGINE = ReplacingMergeTree(_version)
PARTITION BY toYYYYMM(day)
ORDER BY (company_id, mailbox_id, day)
SETTINGS non_replicated_deduplication_window = 10000
COMMENT 'Per mailbox per UTC send day email outcomes (distinct emails); aggregate, customer-facing analytics';

CREATE VIEW IF NOT EXISTS mailbox_analytics_v AS
SELECT company_id, mailbox_id, day, sent, delivered, opened_tracked, clicked_tracked, replied,
       bounced, bounced_hard, bounced_soft, unsubscribed, spam_complaints, updated
FROM mailbox_analytics FINAL;

-- sequence_step_analytics: one row per (company, campaign, sequence step, UTC send day).
-- Source events: events.email; only emails whose email_sent carries a sequence_step_id
-- (emails sent outside a sequence count in campaign_analytics only).
CREATE TABLE IF NOT EXISTS sequence_step_analytics
(
    company_id       String COMMENT 'tenant (company) id',
    campaign_id      String COMMENT 'campaign id, unique within the company',
    sequence_step_id String COMMENT 'sequence step that produced the emails (from email_sent)',
    day              Date COMMENT 'UTC day of the email_sent event',
    sent             UInt64 COMMENT 'distinct emails of this step sent that day (email_sent)',
    delivered        UInt64 COMMENT 'of those, distinct emails with an email_delivered',
    opened_tracked   UInt64 COMMENT 'of those, distinct emails with at least one tracked open',
    clicked_tracked  UInt64 COMMENT 'of those, distinct emails with at least one tracked click',
    replied          UInt64 COMMENT 'of those, distinct emails with a reply',
    bounced          UInt64 COMMENT 'of those, distinct emails that bounced (hard or soft)',
    unsubscribed     UInt64 COMMENT 'of those, distinct emails whose lead unsubscribed from it',
    spam_complaints  UInt64 COMMENT 'of those, distinct emails reported as spam',
    updated          DateTime64(3, 'UTC') COMMENT 'when the worker last wrote this row',
    _version         UInt64 COMMENT 'monotonic row version (source offsets applied); internal'
)
ENGINE = ReplacingMergeTree(_version)
PARTITION BY toYYYYMM(day)
ORDER BY (company_id, campaign_id, sequence_step_id, day)
SETTINGS non_replicated_deduplication_window = 10000
COMMENT 'Per campaign sequence step per UTC send day email outcomes (distinct emails); aggregate analytics';

CREATE VIEW IF NOT EXISTS sequence_step_analytics_v AS
SELECT company_id, campaign_id, sequence_step_id, day, sent, delivered, opened_tracked,
       clicked_tracked, replied, bounced, unsubscribed, spam_complaints, updated
FROM sequence_step_analytics FINAL;

-- lead_analytics: one row per (company, lead), over every email ever sent to the lead.
-- Source events: events.email, attributed to the lead of email_sent. The latest state is
-- a pure function of the lead's emails (order-independent, so exact under replay).
CREATE TABLE IF NOT EXISTS lead_analytics
(
    company_id      String COMMENT 'tenant (company) id',
    lead_id         String COMMENT 'lead (recipient contact) id',
    emails_sent     UInt64 COMMENT 'distinct emails sent to this lead (email_sent)',
    delivered       UInt64 COMMENT 'of those, distinct emails with an email_delivered',
    opened_tracked  UInt64 COMMENT 'of those, distinct emails with at least one tracked open',
    clicked_tracked UInt64 COMMENT 'of those, distinct emails with at least one tracked click',
    replied         UInt64 COMMENT 'of those, distinct emails the lead replied to',
    bounced         UInt64 COMMENT 'of those, distinct emails that bounced (hard or soft)',
    bounced_hard    UInt64 COMMENT 'of those, distinct emails with a hard (permanent) bounce',
    unsubscribed    UInt64 COMMENT 'of those, distinct emails the lead unsubscribed from',
    spam_complaints UInt64 COMMENT 'of those, distinct emails the lead reported as spam',
    campaigns       UInt64 COMMENT 'distinct campaigns that sent this lead an email',
    first_sent_day  Nullable(Date) COMMENT 'UTC day of the first email sent to the lead (NULL if none)',
    last_sent_day   Nullable(Date) COMMENT 'UTC day of the latest email sent to the lead (NULL if none)',
    status          LowCardinality(String) COMMENT 'latest state: the most decisive outcome of any email, in order spam_complaint, unsubscribed, bounced_hard, replied, clicked, opened, delivered, sent (empty if none)',
    updated         DateTime64(3, 'UTC') COMMENT 'when the worker last wrote this row',
    _version        UInt64 COMMENT 'monotonic row version (source offsets applied); internal'
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY (company_id, lead_id)
SETTINGS non_replicated_deduplication_window = 10000
COMMENT 'Per lead engagement totals (distinct emails) and latest state; aggregate analytics';

CREATE VIEW IF NOT EXISTS lead_analytics_v AS
SELECT company_id, lead_id, emails_sent, delivered, opened_tracked, clicked_tracked, replied,
       bounced, bounced_hard, unsubscribed, spam_complaints, campaigns, first_sent_day,
       last_sent_day, status, updated
FROM lead_analytics FINAL;

-- warmup_analytics: one row per (company, mailbox being warmed up, UTC warm-up send day).
-- Source events: events.warmup (warmup_email_sent, warmup_email_landed,
-- warmup_email_replied); counts DISTINCT warm-up email ids whose winning
-- warmup_email_sent falls on the day. A warm-up email's placement is its first landing.
CREATE TABLE IF NOT EXISTS warmup_analytics
(
    company_id           String COMMENT 'tenant (company) id',
    mailbox_id           String COMMENT 'mailbox being warmed up (from warmup_email_sent)',
    day                  Date COMMENT 'UTC day of the warmup_email_sent event',
    warmup_sent          UInt64 COMMENT 'distinct warm-up emails sent that day',
    landed               UInt64 COMMENT 'of those, distinct emails with a warmup_email_landed',
    landed_inbox         UInt64 COMMENT 'of those, distinct emails whose first landing was the inbox',
    landed_spam          UInt64 COMMENT 'of those, distinct emails whose first landing was spam',
    landed_other         UInt64 COMMENT 'of those, distinct emails whose first landing was another folder',
    replied              UInt64 COMMENT 'of those, distinct emails the warm-up peer replied to',
    inbox_placement_rate Nullable(Float64) COMMENT 'landed_inbox / landed, 0 to 1 (NULL when nothing landed yet)',
    updated              DateTime64(3, 'UTC') COMMENT 'when the worker last wrote this row',
    _version             UInt64 COMMENT 'monotonic row version (source offsets applied); internal'
)
ENGINE = ReplacingMergeTree(_version)
PARTITION BY toYYYYMM(day)
ORDER BY (company_id, mailbox_id, day)
SETTINGS non_replicated_deduplication_window = 10000
COMMENT 'Per mailbox per UTC day warm-up placement (distinct warm-up emails); aggregate analytics';

CREATE VIEW IF NOT EXISTS warmup_analytics_v AS
SELECT company_id, mailbox_id, day, warmup_sent, landed, landed_inbox, landed_spam,
       landed_other, replied, inbox_placement_rate, updated
FROM warmup_analytics FINAL;

-- billing_analytics: one row per (company, UTC calendar month) with sends or plan events.
-- Source events: events.email (email_sent, attributed by the winning send's month) and
-- events.business (business_signup, business_upgrade, business_downgrade, business_churn;
-- counted by distinct event_id). Warm-up sends are not billable.
CREATE TABLE IF NOT EXISTS billing_analytics
(
    company_id          String COMMENT 'tenant (company) id',
    month               Date COMMENT 'first day of the UTC calendar month',
    billable_sends      UInt64 COMMENT 'distinct emails sent in the month (email_sent; warm-up excluded)',
    active_mailboxes    UInt64 COMMENT 'distinct mailboxes that sent at least one of those emails',
    signups             UInt64 COMMENT 'distinct business_signup events in the month',
    upgrades            UInt64 COMMENT 'distinct business_upgrade events in the month',
    downgrades          UInt64 COMMENT 'distinct business_downgrade events in the month',
    churns              UInt64 COMMENT 'distinct business_churn events in the month',
    plan_at_month_end   Nullable(String) COMMENT 'plan_to of the last business event before the month ended (earlier months included); NULL if none yet or churned',
    active_at_month_end UInt8 COMMENT '1 if the last business event before the month ended is not a churn',
    updated             DateTime64(3, 'UTC') COMMENT 'when the worker last wrote this row',
    _version            UInt64 COMMENT 'monotonic row version (source offsets applied); internal'
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY (company_id, month)
SETTINGS non_replicated_deduplication_window = 10000
COMMENT 'Per company per month billable usage and plan changes; contractual aggregate for billing';

CREATE VIEW IF NOT EXISTS billing_analytics_v AS
SELECT company_id, month, billable_sends, active_mailboxes, signups, upgrades, downgrades,
       churns, plan_at_month_end, active_at_month_end, updated
FROM billing_analytics FINAL;
