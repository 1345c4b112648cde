-- Widening an existing compliance record with request details.
ALTER TABLE consent_audit
    ADD COLUMN user_agent String COMMENT 'browser of the subscriber',
    ADD COLUMN render_duration_ms UInt32 COMMENT 'time to render the consent form';
