-- An order-management product's "audit trail": every change of an order with both row
-- images and the request that made it. Declared audit, but wide and full of payloads.
CREATE TABLE order_audit_trail
(
    tenant_id        String COMMENT 'tenant',
    event_id         String COMMENT 'change id',
    occurred_at      DateTime64(3) COMMENT 'when',
    actor_user_id    String COMMENT 'who',
    action           String COMMENT 'insert, update, delete',
    order_id         String COMMENT 'which order',
    order_status     String COMMENT 'status after the change',
    before_payload   String COMMENT 'full order row before, JSON',
    after_payload    String COMMENT 'full order row after, JSON',
    request_body     String COMMENT 'the API request that made the change',
    context          JSON COMMENT 'whatever the caller attached',
    client_version   String COMMENT 'app version of the caller',
    warehouse_code   String COMMENT 'fulfilment warehouse',
    carrier          String COMMENT 'shipping carrier',
    currency         String COMMENT 'order currency',
    total_cents      Int64 COMMENT 'order total after the change',
    discount_cents   Int64 COMMENT 'discount after the change',
    tax_cents        Int64 COMMENT 'tax after the change',
    items            UInt32 COMMENT 'line items after the change',
    notes            String COMMENT 'free text'
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, occurred_at, event_id)
COMMENT 'Audit trail of order changes';
