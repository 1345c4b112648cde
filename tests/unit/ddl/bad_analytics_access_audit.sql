-- Spec §3.4: detailed per-query/per-dashboard access logs belong to the SIEM.
CREATE TABLE analytics_access_audit (
  id uuid PRIMARY KEY,
  tenant_id text,
  user_id text,
  dashboard_id text,
  query_text text,
  query_duration_ms integer,
  rows_scanned bigint,
  accessed_at timestamptz NOT NULL
);
