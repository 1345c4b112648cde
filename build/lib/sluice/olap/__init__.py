"""The OLAP warehouse: the catalog of tables (the one source of their columns), the DDL
and versioned migrations rendered from it, the client with idempotent writes and
guarded reads, and the proposal lint.

Only the tables in :data:`OLAP_TABLES` may ever be written (DESIGN §3): the writer refuses
anything else, so a bug cannot turn the warehouse into a log store.

Names are imported lazily, so the pure modules (:mod:`sluice.olap.catalog`,
:mod:`sluice.olap.values`, :mod:`sluice.olap.lint`) work without clickhouse-connect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sluice.olap.catalog import OLAP_TABLES
    from sluice.olap.client import OlapClient, OlapError, connect, open_store
    from sluice.olap.migrations import migrate

__all__ = ["OLAP_TABLES", "OlapClient", "OlapError", "connect", "migrate", "open_store"]

_HOME = {
    "OLAP_TABLES": "sluice.olap.catalog",
    "OlapClient": "sluice.olap.client",
    "OlapError": "sluice.olap.client",
    "connect": "sluice.olap.client",
    "open_store": "sluice.olap.client",
    "migrate": "sluice.olap.migrations",
}


def __getattr__(name: str) -> Any:
    import importlib

    if name not in _HOME:
        raise AttributeError(f"module 'sluice.olap' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)
