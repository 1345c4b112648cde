-- Who opened which page, from which browser (PostgreSQL dialect).
CREATE TABLE access_events (
    id          bigserial PRIMARY KEY,
    user_id     text NOT NULL,
    url         text NOT NULL,
    referrer    text,
    session_id  text,
    user_agent  text,
    accessed_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE access_events IS 'compliance: who accessed what, for the auditors';
