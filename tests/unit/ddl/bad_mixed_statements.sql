SET allow_experimental_analyzer = 1;

-- A daily aggregate, its view, a backfill and a materialized view into it: all fine.
CREATE TABLE link_daily_clicks
(
    tenant_id String COMMENT 'tenant',
    link_id   String COMMENT 'short link',
    day       Date COMMENT 'UTC day of the click',
    clicks    UInt64 COMMENT 'clicks that day'
)
ENGINE = SummingMergeTree
ORDER BY (tenant_id, link_id, day)
COMMENT 'Per link per UTC day clicks';

CREATE VIEW link_daily_clicks_v AS SELECT * FROM link_daily_clicks FINAL;

INSERT INTO link_daily_clicks
SELECT tenant_id, link_id, toDate(clicked_at) AS day, count() AS clicks
FROM link_clicks GROUP BY tenant_id, link_id, day;

CREATE MATERIALIZED VIEW link_daily_clicks_mv TO link_daily_clicks AS
SELECT tenant_id, link_id, toDate(clicked_at) AS day, count() AS clicks
FROM link_clicks GROUP BY tenant_id, link_id, day;

-- But this materialized view stores its own inner table: every click, with its URL.
CREATE MATERIALIZED VIEW link_clicks_copy
ENGINE = MergeTree
ORDER BY (tenant_id, event_id)
AS SELECT tenant_id, event_id, clicked_at, url
FROM link_clicks;

OPTIMIZE TABLE link_daily_clicks FINAL;
DROP TABLE IF EXISTS link_daily_clicks_old SYNC;
