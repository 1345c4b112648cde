"""Erased leads in the OLAP store: find their rows, purge them (docs/erasure.md).

Rows keyed by a lead (``lead_analytics``; any catalog table whose key has ``lead_id``) are
*deleted*, not hidden: a ReplacingMergeTree tombstone row (``is_deleted``) would keep the
lead's id on disk under its key until a ``FINAL CLEANUP`` merge, and the table's engine
cannot gain that argument without a rebuild. ``ALTER TABLE ... DELETE`` (a mutation,
waited for with ``mutations_sync = 2``) rewrites the parts that hold the rows; ClickHouse
removes the old parts after ``old_parts_lifetime`` (480 s by default). The worker's
ClickHouse user needs ``ALTER DELETE`` on those tables (docs/operations.md).

Every statement names a lead by its reference (:data:`sluice.privacy.REF_SQL`), never by
its id, so neither the mutation's text (kept in ``system.mutations``) nor the query log
holds an erased lead's id. The tenant is not personal data and selects the primary-key
range, so a check reads one tenant's rows.

Compliance records (``admin_audit_log``, ``sensitive_access_log``) are never purged: they
are kept by law (GDPR Art. 17(3)(b), (e)); :func:`find` reports them apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sluice.olap.catalog import OLAP_TABLES
from sluice.olap.client import OlapClient
from sluice.olap.ddl import Target, quote_string
from sluice.privacy import REF_SQL

#: Tables whose rows are keyed by the lead: an erasure deletes them.
LEAD_TABLES: tuple[str, ...] = tuple(t.name for t in OLAP_TABLES.values() if "lead_id" in t.key)
#: Compliance records that may name a lead as their target: reported, kept.
RECORD_TARGETS: dict[str, tuple[str, str, str]] = {
    # table -> (tenant column, condition the row is about a lead, the lead expression)
    "admin_audit_log": ("tenant_id", "target_type = 'lead'", "assumeNotNull(target_id)"),
    "sensitive_access_log": (
        "tenant_id",
        "startsWith(target, 'lead:')",
        "substring(assumeNotNull(target), 6)",
    ),
}
CHUNK = 500  # references per statement
_HEX = re.compile(r"^[0-9a-f]{32}$")


def _ref(tenant_column: str, lead: str) -> str:
    return REF_SQL.replace("company_id", tenant_column).format(lead=lead)


def _refs_sql(refs: Iterable[str]) -> str:
    checked = sorted(set(refs))
    bad = [r for r in checked if not _HEX.match(r)]
    if bad:
        raise ValueError(f"not a lead reference: {bad[0]!r}")
    return ", ".join(f"'{r}'" for r in checked)


def _chunks(refs: Iterable[str]) -> Iterable[list[str]]:
    items = sorted(set(refs))
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


def present(client: OlapClient, table: str, tenant: str, refs: Iterable[str]) -> dict[str, int]:
    """Rows of ``table`` per reference among ``refs`` (only those with rows)."""
    spec = OLAP_TABLES[table]
    tenant_col = "company_id" if "company_id" in spec.columns else "tenant_id"
    found: dict[str, int] = {}
    for chunk in _chunks(refs):
        ref = _ref(tenant_col, "lead_id")
        _, rows = client.query(
            f"SELECT {ref} AS ref, count() AS n FROM {table} "
            f"WHERE {tenant_col} = {quote_string(tenant)} AND ref IN ({_refs_sql(chunk)}) "
            "GROUP BY ref"
        )
        found.update({str(r): int(n) for r, n in rows})
    return found


def purge(
    client: OlapClient, refs_by_tenant: Mapping[str, Iterable[str]], cluster: str | None = None
) -> int:
    """Delete every row of the lead tables naming one of the erased leads; return how many
    rows were found (and deleted). Only references that have rows cost a mutation."""
    target = Target(cluster)
    deleted = 0
    for table in LEAD_TABLES:
        for tenant, refs in sorted(refs_by_tenant.items()):
            found = present(client, table, tenant, refs)
            for chunk in _chunks(found):
                client.command(
                    f"ALTER TABLE {table}{target.on_cluster} DELETE WHERE "
                    f"company_id = {quote_string(tenant)} AND "
                    f"{_ref('company_id', 'lead_id')} IN ({_refs_sql(chunk)}) "
                    "SETTINGS mutations_sync = 2"
                )
                deleted += sum(found[r] for r in chunk)
    return deleted


@dataclass(frozen=True)
class Found:
    """What the OLAP store holds that names one lead."""

    rows: dict[str, int]  # lead tables: rows (must be none after an erasure)
    records: dict[str, int]  # compliance records naming the lead as their target (kept)


def find(client: OlapClient, tenant: str, ref: str) -> Found:
    """Count the rows naming the lead of reference ``ref`` (``sluice privacy verify``)."""
    rows = {t: n for t in LEAD_TABLES if (n := present(client, t, tenant, [ref]).get(ref, 0))}
    records: dict[str, int] = {}
    for table, (tenant_col, about, lead) in RECORD_TARGETS.items():
        _, result = client.query(
            f"SELECT count() FROM {table} FINAL WHERE {tenant_col} = {quote_string(tenant)} "
            f"AND {about} AND {_ref(tenant_col, lead)} = '{_refs_sql([ref])[1:-1]}'"
        )
        n = int(result[0][0]) if result else 0
        if n:
            records[table] = n
    return Found(rows, records)
