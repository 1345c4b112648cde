CREATE TABLE admin_ui_events
(
    event_id    String COMMENT 'event',
    tenant_id   String COMMENT 'tenant',
    page        String COMMENT 'admin page',
    button      Nullable(String) COMMENT 'clicked element',
    session_id  String COMMENT 'ui session',
    occurred_at DateTime64(3) COMMENT 'when'
)
ENGINE = MergeTree
ORDER BY (tenant_id, occurred_at, event_id);
