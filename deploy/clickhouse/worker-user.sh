#!/bin/bash
# ClickHouse image init script (/docker-entrypoint-initdb.d): the worker's own user, which
# may only INSERT and SELECT, and delete an erased lead's lead_analytics row
# (docs/erasure.md). The admin user (CLICKHOUSE_USER) runs `sluice olap migrate`;
# see docs/operations.md for the grants on a server or a cluster.
set -euo pipefail
clickhouse client --user "$CLICKHOUSE_USER" --password "$CLICKHOUSE_PASSWORD" --multiquery <<SQL
CREATE USER IF NOT EXISTS ${SLUICE_WORKER_USER:-sluice_worker}
    IDENTIFIED WITH sha256_password BY '${SLUICE_WORKER_PASSWORD:-sluice_worker}';
GRANT SELECT, INSERT ON ${CLICKHOUSE_DB:-default}.* TO ${SLUICE_WORKER_USER:-sluice_worker};
GRANT ALTER DELETE ON ${CLICKHOUSE_DB:-default}.lead_analytics TO ${SLUICE_WORKER_USER:-sluice_worker};
SQL
