"""The OLAP warehouse: connection, catalog of tables, versioned migrations, idempotent writes.

Only the tables in :data:`OLAP_TABLES` may ever be written (DESIGN §3): the writer refuses
anything else, so a bug cannot turn the warehouse into a log store.
"""

from sluice.olap.catalog import OLAP_TABLES
from sluice.olap.client import OlapClient, OlapError, connect
from sluice.olap.migrate import migrate

__all__ = ["OLAP_TABLES", "OlapClient", "OlapError", "connect", "migrate"]
