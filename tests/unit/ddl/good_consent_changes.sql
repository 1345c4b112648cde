-- A newsletter platform (not Sluice's): every change of a subscriber's marketing consent,
-- the proof a regulator asks for. One row per change; the latest row per subject and
-- purpose is the current state.
CREATE TABLE marketing_consent_changes
(
    tenant_id      String COMMENT 'publisher (tenant) id',
    event_id       UUID COMMENT 'id of the consent change',
    changed_at     DateTime64(3, 'UTC') COMMENT 'when the subscriber changed it',
    subject_id     String COMMENT 'subscriber the consent belongs to',
    purpose        LowCardinality(String) COMMENT 'newsletter, partner_offers, profiling',
    channel        LowCardinality(String) COMMENT 'email, sms, web_form',
    granted        UInt8 COMMENT '1 granted, 0 withdrawn',
    legal_basis    LowCardinality(String) COMMENT 'consent or legitimate_interest',
    policy_version String COMMENT 'privacy policy version shown',
    recorded_by    LowCardinality(String) COMMENT 'service that recorded the change',
    source         LowCardinality(String) COMMENT 'subscriber, import or support'
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, subject_id, changed_at, event_id)
COMMENT 'Consent record: one row per consent change (GDPR Art. 7 proof); no TTL';
