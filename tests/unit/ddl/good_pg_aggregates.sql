-- PostgreSQL-style proposals for a helpdesk product (not Sluice's), documented with
-- COMMENT ON, as a migration tool would write them.
CREATE TABLE IF NOT EXISTS ticket_daily_stats (
    day          date        NOT NULL,
    workspace_id text        NOT NULL,
    opened       integer     NOT NULL DEFAULT 0,
    solved       integer     NOT NULL DEFAULT 0,
    reopened     integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (day, workspace_id)
);
COMMENT ON TABLE ticket_daily_stats IS 'Per workspace per UTC day ticket counts';
COMMENT ON COLUMN ticket_daily_stats.day IS 'UTC day';
COMMENT ON COLUMN ticket_daily_stats.workspace_id IS 'workspace (tenant) id';
COMMENT ON COLUMN ticket_daily_stats.opened IS 'tickets opened that day';
COMMENT ON COLUMN ticket_daily_stats.solved IS 'tickets solved that day';
COMMENT ON COLUMN ticket_daily_stats.reopened IS 'tickets reopened that day';

-- A surrogate id, but the grain is the UNIQUE constraint: one row per workspace and month.
CREATE TABLE agent_monthly_seats (
    id           bigserial PRIMARY KEY,
    workspace_id text    NOT NULL,
    month        date    NOT NULL,
    seats        integer NOT NULL,
    CONSTRAINT agent_monthly_seats_grain UNIQUE (workspace_id, month)
);
COMMENT ON TABLE agent_monthly_seats IS 'Paid agent seats per workspace per month (billing)';
COMMENT ON COLUMN agent_monthly_seats.id IS 'surrogate key';
COMMENT ON COLUMN agent_monthly_seats.workspace_id IS 'workspace (tenant) id';
COMMENT ON COLUMN agent_monthly_seats.month IS 'first day of the month';
COMMENT ON COLUMN agent_monthly_seats.seats IS 'paid seats at month end';
