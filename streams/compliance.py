"""Compliance records: the hash-chained audit log and the sensitive-access record.

Pure logic; row formats and hashing live in :mod:`sluice.olap.audit`.

Exactly once, whatever the redelivery
-------------------------------------
:class:`AuditLog` remembers every compliance event id it numbered, per tenant, in the
changelog: a redelivered event (same offset after a crash, or produced twice) finds its
id and changes nothing. Sequence numbers are assigned in partition order when an event is
first seen, so they are a pure function of the log and survive crash and replay:

* each entry ``[tenant, event_id] -> [seq, prev_hash, row_hash, written, row]`` goes to the
  changelog *before* its row is written to the OLAP (checkpoint order);
* a checkpoint that is not handed back (:meth:`AuditLog.requeue`) succeeded, so the next
  take marks its rows written and replaces their entries by compact ones (no row);
* after a restore, rows not known to be written are written again — the same bytes under
  the same key ``(tenant_id, seq, event_id)``, which ReplacingMergeTree absorbs;
* a crash in the middle of a changelog flush can leave a tail of entries whose
  predecessors never arrived (a gap, or a link to a hash nobody holds). Their OLAP write
  and their ack never happened, so they are dropped on restore and their events, which
  Kafka redelivers, are numbered again, in the same order, to the same numbers.

The per-tenant head ``(next_seq, last_hash)`` is derived from the entries on restore, so
it can never disagree with them.

:class:`SensitiveAccess` rows are a pure function of one event and keyed by its id, so a
rewrite after redelivery is the same row: it needs no changelog state.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from sluice.olap.audit import AUDIT_COLUMNS, GENESIS_HASH, audit_row, ms_to_datetime
from sluice.olap.catalog import OLAP_TABLES
from streams.state import Component, RowKey, TablePart, Taken
from topics.taxonomy import COMPLIANCE_ACTIONS

AUDIT_TABLE = "admin_audit_log"
# event_id in the key: a row claiming a taken seq (a bug, or a forgery) is kept beside the
# original instead of replacing it, so a compliance fact is never silently overwritten.
AUDIT_KEY = ("tenant_id", "seq", "event_id")
AUDIT_VALUES: tuple[str, ...] = tuple(c for c in AUDIT_COLUMNS if c not in AUDIT_KEY)

# AuditEntry slots: [seq, prev_hash, row_hash, written (0/1), row dict | None once written]
SEQ, PREV_HASH, ROW_HASH, WRITTEN, ROW = range(5)
AuditEntry = list


class AuditLog(Component):
    """Per-tenant hash chains of compliance actions (one partition's tenants)."""

    tag = "\x00audit"
    families = frozenset({"admin_action"})

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], AuditEntry] = {}
        self.heads: dict[str, tuple[int, str]] = {}  # tenant -> (next seq, last row_hash)
        self.pending: set[tuple[str, str]] = set()  # rows to write
        self.in_flight: set[tuple[str, str]] = set()  # rows handed to the last checkpoint
        self.dirty_log: set[tuple[str, str]] = set()  # entries to send to the changelog

    def parts(self) -> tuple[TablePart, ...]:
        return (TablePart(AUDIT_TABLE, AUDIT_KEY, AUDIT_VALUES, versioned=False),)

    def apply(self, event: Mapping) -> bool:
        # low-risk admin actions (setting toggles, record views) never reach the log
        if event["event_type"] not in COMPLIANCE_ACTIONS:
            return False
        key = (event["tenant_id"], event["event_id"])
        if key in self.entries:
            return False  # numbered already: exactly once per event id
        seq, prev = self.heads.get(key[0], (1, GENESIS_HASH))
        row = audit_row(event, seq, prev)
        self.entries[key] = [seq, prev, row["row_hash"], 0, row]
        self.heads[key[0]] = (seq + 1, row["row_hash"])
        self.pending.add(key)
        self.dirty_log.add(key)
        return True

    def take(self) -> Taken:
        # No requeue since the last take: the rows it handed out are in the OLAP.
        for key in self.in_flight:
            entry = self.entries.get(key)
            if entry is not None and not entry[WRITTEN]:
                entry[WRITTEN], entry[ROW] = 1, None
                self.dirty_log.add(key)
        self.in_flight, self.pending = self.pending, set()
        entries = sorted(
            (self.entries[k] for k in self.in_flight), key=lambda e: (e[ROW]["tenant_id"], e[SEQ])
        )
        rows = {
            (e[ROW]["tenant_id"], e[SEQ], e[ROW]["event_id"]): _row_values(e[ROW]) for e in entries
        }
        logged = sorted(self.dirty_log)
        self.dirty_log.clear()
        return Taken(
            changelog=[([t, e], list(self.entries[(t, e)])) for t, e in logged],
            rows={AUDIT_TABLE: rows} if rows else {},
            token=(set(self.in_flight), logged),
        )

    def requeue(self, taken: Taken) -> None:
        rows, logged = taken.token
        for key in rows & self.in_flight:
            self.in_flight.discard(key)
            self.pending.add(key)
        self.dirty_log.update(k for k in logged if k in self.entries)

    def restore(self, key: list, value: list) -> None:
        tenant, event_id = key
        entry = [
            int(value[SEQ]),
            value[PREV_HASH],
            value[ROW_HASH],
            int(value[WRITTEN]),
            value[ROW],
        ]
        old = self.entries.get((tenant, event_id))
        # one value per key normally (the changelog is compacted); a written entry wins
        if old is None or (entry[WRITTEN] and not old[WRITTEN]):
            self.entries[(tenant, event_id)] = entry

    def restored(self) -> None:
        by_tenant: dict[str, list[tuple[str, AuditEntry]]] = defaultdict(list)
        for (tenant, event_id), entry in self.entries.items():
            by_tenant[tenant].append((event_id, entry))
        self.pending.clear()
        self.in_flight.clear()
        # entries numbered here before a rebalance that kept the partition, not yet in
        # the changelog: their events come again but are numbered already (apply), so
        # only these marks still get them there (joins never add any)
        unlogged, self.dirty_log = self.dirty_log, set()
        for tenant, items in by_tenant.items():
            items.sort(key=lambda item: item[1][SEQ])
            expected, prev, valid = 1, GENESIS_HASH, 0
            for _, entry in items:
                if entry[SEQ] != expected or entry[PREV_HASH] != prev:
                    break
                expected, prev, valid = expected + 1, entry[ROW_HASH], valid + 1
            # Past the first break only entries of an interrupted flush can lie: never
            # written, never acked, so their events come again. Written ones are kept
            # whatever happens (their rows are in the OLAP; verify will say if it is torn).
            last_written = max((i for i, (_, e) in enumerate(items) if e[WRITTEN]), default=-1)
            keep = max(valid, last_written + 1)
            for event_id, _ in items[keep:]:
                del self.entries[(tenant, event_id)]
            kept = items[:keep]
            if kept:
                self.heads[tenant] = (kept[-1][1][SEQ] + 1, kept[-1][1][ROW_HASH])
            else:
                self.heads.pop(tenant, None)
            self.pending.update((tenant, eid) for eid, e in kept if not e[WRITTEN])
        self.dirty_log = {key for key in unlogged if key in self.entries}

    def stats(self) -> dict[str, int]:
        return {"audit_entries": len(self.entries), "audit_unwritten": len(self.pending)}


def _row_values(row: Mapping[str, Any]) -> tuple:
    values = {**row, "occurred_at": ms_to_datetime(row["occurred_at"])}
    return tuple(values[c] for c in AUDIT_VALUES)


# --------------------------------------------------------------------------------------
# Sensitive-data access and exports (spec §3.4)
# --------------------------------------------------------------------------------------

SENSITIVE_TABLE = "sensitive_access_log"
SENSITIVE_KEY = OLAP_TABLES[SENSITIVE_TABLE].key
SENSITIVE_VALUES = OLAP_TABLES[SENSITIVE_TABLE].value_columns

#: data_scope values that make a security_data_access event sensitive even when the
#: producer did not set ``sensitive`` (personal, contact, payment or contractual data).
# fmt: off
SENSITIVE_SCOPES: frozenset[str] = frozenset(
    {
        "pii", "personal", "personal_data", "contacts", "leads", "customer_data",
        "phi", "health", "financial", "payment", "billing", "contract",
    }
)
# fmt: on
EXPORT_KINDS: Mapping[str, str] = {
    "admin_data_export_requested": "export_requested",
    "admin_data_export_approved": "export_approved",
}


def sensitive_kind(event: Mapping) -> str | None:
    """The sensitive-access kind of an event, or None if it is not one."""
    event_type = event["event_type"]
    if event_type in EXPORT_KINDS:
        return EXPORT_KINDS[event_type]
    if event_type == "security_data_access" and (
        event.get("sensitive") or (event.get("data_scope") or "").lower() in SENSITIVE_SCOPES
    ):
        return "data_access"
    return None


def sensitive_row(event: Mapping, kind: str) -> tuple:
    """The value columns of one sensitive_access_log row."""
    if kind == "data_access":
        target = event.get("resource")
    else:
        parts = [p for p in (event.get("target_type"), event.get("target_id")) if p]
        target = ":".join(parts) or None
    return (
        ms_to_datetime(event["occurred_at"]),
        kind,
        event.get("user_id"),
        event.get("impersonator_user_id"),
        event.get("data_scope"),
        event.get("record_count"),
        target,
        event.get("approval_of"),
        event.get("outcome"),
    )


class SensitiveAccess(Component):
    """Sensitive-data access and export events → one narrow row each."""

    tag = "\x00sensitive"
    families = frozenset({"security", "admin_action"})

    def __init__(self) -> None:
        self.pending: dict[RowKey, tuple] = {}

    def parts(self) -> tuple[TablePart, ...]:
        return (TablePart(SENSITIVE_TABLE, SENSITIVE_KEY, SENSITIVE_VALUES, versioned=False),)

    def apply(self, event: Mapping) -> bool:
        kind = sensitive_kind(event)
        if kind is None:
            return False
        self.pending[(event["tenant_id"], event["event_id"])] = sensitive_row(event, kind)
        return True

    def take(self) -> Taken:
        rows, self.pending = self.pending, {}
        return Taken(rows={SENSITIVE_TABLE: rows} if rows else {})

    def requeue(self, taken: Taken) -> None:
        for key, values in taken.rows.get(SENSITIVE_TABLE, {}).items():
            self.pending.setdefault(key, values)

    def stats(self) -> dict[str, int]:
        return {"sensitive_pending": len(self.pending)}
