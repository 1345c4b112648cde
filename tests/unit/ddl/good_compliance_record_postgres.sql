-- A document-management product (not Sluice's), PostgreSQL dialect: legal holds placed
-- and released, one row per action, kept for as long as the matter lasts and beyond.
CREATE TABLE legal_hold_actions (
    event_id          uuid        PRIMARY KEY,
    tenant_id         text        NOT NULL,
    occurred_at       timestamptz NOT NULL,
    action            text        NOT NULL CHECK (action IN ('placed', 'released', 'extended')),
    matter_id         text        NOT NULL,
    custodian_user_id text        NOT NULL,
    actor_user_id     text        NOT NULL,
    reason            text
);
COMMENT ON TABLE legal_hold_actions IS 'Legal hold record: one row per hold action';
COMMENT ON COLUMN legal_hold_actions.event_id IS 'id of the hold action';
COMMENT ON COLUMN legal_hold_actions.tenant_id IS 'customer (tenant) id';
COMMENT ON COLUMN legal_hold_actions.occurred_at IS 'when the action was taken';
COMMENT ON COLUMN legal_hold_actions.action IS 'placed, released or extended';
COMMENT ON COLUMN legal_hold_actions.matter_id IS 'legal matter the hold belongs to';
COMMENT ON COLUMN legal_hold_actions.custodian_user_id IS 'whose documents are held';
COMMENT ON COLUMN legal_hold_actions.actor_user_id IS 'who placed or released the hold';
COMMENT ON COLUMN legal_hold_actions.reason IS 'stated reason or counsel reference';
