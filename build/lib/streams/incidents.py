"""admin_system_events: one row per notable system event or alert storm, never per alert.

Pure logic. Two kinds of rows:

* ``system_incident_opened``, ``system_incident_resolved`` and
  ``system_maintenance_completed``: one row each, a pure function of the event, keyed by
  its event id — a redelivery rewrites the same row, so they need no changelog state.
* ``infra_alert`` storms, coalesced into one row per incident:

  - alerts carrying an ``incident_key`` form one incident per key, however spread out;
  - alerts without one are grouped by ``(alert_name, service)`` and split into storms
    wherever two consecutive alerts are more than :data:`STORM_GAP_MS` apart (a
    session window). The row's key names the storm's first alert time.

  Each row has first/last seen, the number of *distinct* alert event ids and the highest
  severity, so redelivered alerts change nothing. The alert ids live in the changelog.

Late alerts can merge two storms or start one earlier, which changes a row's key. The old
row is then superseded by a tombstone (``_deleted = 1``, a higher ``_version``), which
``FINAL`` and the view hide: the writer never needs DELETE. Every row key ever emitted is
kept in the changelog so a restore still knows which rows to tombstone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sluice.olap.audit import ms_to_datetime
from sluice.olap.catalog import OLAP_TABLES
from streams.state import Component, RowKey, TablePart, Taken

TABLE = "admin_system_events"
KEY_COLUMNS = OLAP_TABLES[TABLE].key
VALUE_COLUMNS = OLAP_TABLES[TABLE].value_columns

#: Alerts of one rule and service further apart than this are separate storms.
STORM_GAP_MS = 30 * 60 * 1000

NOTABLE_KINDS: Mapping[str, str] = {
    "system_incident_opened": "incident_opened",
    "system_incident_resolved": "incident_resolved",
    "system_maintenance_completed": "maintenance_completed",
}

# Severity words of alerting tools and incident processes, lowest first; unknown words
# rank below all of them (ties broken by the word, so the maximum is deterministic).
# fmt: off
SEVERITY_RANK: Mapping[str, int] = {
    "debug": 0, "info": 1, "notice": 2, "low": 2, "minor": 3, "warning": 3, "warn": 3,
    "medium": 3, "error": 4, "high": 4, "major": 4, "critical": 5, "fatal": 6,
}
# fmt: on

# (occurred_at, severity, alert_name, service, incident_key): one alert as coalescing needs it
Alert = tuple[int, str | None, str | None, str | None, str | None]
Group = tuple  # ("key", incident_key) | ("rule", alert_name, service)


def alert_group(alert: Alert) -> Group:
    """Which incident group an alert belongs to (see the module docstring)."""
    _, _, name, service, incident_key = alert
    if incident_key:
        return ("key", incident_key)
    return ("rule", name or "", service or "")


def severity_order(severity: str | None) -> tuple[int, str]:
    s = (severity or "").lower()
    return (SEVERITY_RANK.get(s, -1), s)


def storms(group: Group, alerts: Mapping[str, Alert]) -> list[list[tuple[str, Alert]]]:
    """Split a group's alerts into storms (one for a keyed group), each in time order."""
    ordered = sorted(alerts.items(), key=lambda item: (item[1][0], item[0]))
    out: list[list[tuple[str, Alert]]] = []
    for item in ordered:
        if out and (group[0] == "key" or item[1][0] - out[-1][-1][1][0] <= STORM_GAP_MS):
            out[-1].append(item)
        else:
            out.append([item])
    return out


def storm_key(group: Group, storm: list[tuple[str, Alert]]) -> str:
    """The row key of a storm: stable for a keyed incident, its start for the others."""
    if group[0] == "key":
        return f"incident:{group[1]}"
    return "storm:" + json.dumps([group[1], group[2], storm[0][1][0]], ensure_ascii=False)


def storm_row(group: Group, storm: list[tuple[str, Alert]]) -> tuple:
    """Value columns of one storm's row."""
    first, last = storm[0][1], storm[-1][1]
    top = max((a[1] for _, a in storm), key=severity_order)
    services = sorted({a[3] for _, a in storm if a[3]})
    values: dict[str, Any] = {
        "kind": "alert_storm",
        "occurred_at": ms_to_datetime(first[0]),
        "title": first[2],
        "severity": top,
        "incident_key": group[1] if group[0] == "key" else None,
        "affected_services": services,
        "alert_name": first[2],
        "service": first[3],
        "first_seen": ms_to_datetime(first[0]),
        "last_seen": ms_to_datetime(last[0]),
        "alert_count": len(storm),
    }
    return _values(values)


def tombstone_row() -> tuple:
    """A superseded storm row (hidden by FINAL and the view)."""
    return _values({"kind": "alert_storm", "occurred_at": ms_to_datetime(0), "_deleted": 1})


def notable_row(event: Mapping) -> tuple:
    """Value columns of the row of one notable system event."""
    values: dict[str, Any] = {
        "kind": NOTABLE_KINDS[event["event_type"]],
        "occurred_at": ms_to_datetime(event["occurred_at"]),
        **{
            f: event.get(f)
            for f in (
                "title",
                "severity",
                "status",
                "summary",
                "incident_id",
                "incident_key",
                "maintenance_id",
            )
        },
        "affected_services": list(event.get("affected_services") or []),
        "started_at": _dt(event.get("started_at")),
        "ended_at": _dt(event.get("ended_at")),
        "alert_count": event.get("alert_count") or 0,
    }
    return _values(values)


def _dt(ms: int | None) -> Any:
    return None if ms is None else ms_to_datetime(ms)


_DEFAULTS: Mapping[str, Any] = {"affected_services": [], "alert_count": 0, "_deleted": 0}


def _values(values: Mapping[str, Any]) -> tuple:
    return tuple(values.get(c, _DEFAULTS.get(c)) for c in VALUE_COLUMNS)


class SystemEvents(Component):
    """Notable system events and coalesced alert storms of one partition's tenants."""

    tag = "\x00system"
    families = frozenset({"system", "infra"})

    def __init__(self) -> None:
        self.notable: dict[RowKey, tuple] = {}  # rows to write
        self.alerts: dict[tuple[str, Group], dict[str, Alert]] = {}
        self.known_alerts: set[tuple[str, str]] = set()
        self.emitted: dict[tuple[str, Group], set[str]] = {}  # row keys ever written
        self.dirty_groups: set[tuple[str, Group]] = set()
        self.dirty_log: set[tuple[str, str]] = set()  # alert ids to persist
        self.dirty_emitted: set[tuple[str, Group, str]] = set()
        self._alert_of: dict[tuple[str, str], tuple[Group, Alert]] = {}

    def parts(self) -> tuple[TablePart, ...]:
        return (TablePart(TABLE, KEY_COLUMNS, VALUE_COLUMNS),)

    def apply(self, event: Mapping) -> bool:
        event_type = event["event_type"]
        tenant = event["tenant_id"]
        if event_type in NOTABLE_KINDS:
            self.notable[(tenant, f"event:{event['event_id']}")] = notable_row(event)
            return True
        if event_type == "infra_alert":
            alert: Alert = (
                event["occurred_at"],
                event.get("severity"),
                event.get("alert_name"),
                event.get("service"),
                event.get("incident_key"),
            )
            if self._add_alert(tenant, event["event_id"], alert):
                self.dirty_log.add((tenant, event["event_id"]))
                return True
        # every other infra event is telemetry: observability only, never OLAP
        return False

    def _add_alert(self, tenant: str, event_id: str, alert: Alert) -> bool:
        if (tenant, event_id) in self.known_alerts:
            return False  # distinct event ids: a redelivered alert changes nothing
        group = alert_group(alert)
        self.known_alerts.add((tenant, event_id))
        self._alert_of[(tenant, event_id)] = (group, alert)
        self.alerts.setdefault((tenant, group), {})[event_id] = alert
        self.dirty_groups.add((tenant, group))
        return True

    def _group_rows(self, tenant: str, group: Group) -> dict[RowKey, tuple]:
        rows: dict[RowKey, tuple] = {}
        current: set[str] = set()
        for storm in storms(group, self.alerts.get((tenant, group), {})):
            key = storm_key(group, storm)
            current.add(key)
            rows[(tenant, key)] = storm_row(group, storm)
        emitted = self.emitted.setdefault((tenant, group), set())
        for stale in emitted - current:
            rows[(tenant, stale)] = tombstone_row()
        for new in current - emitted:
            emitted.add(new)
            self.dirty_emitted.add((tenant, group, new))
        return rows

    def take(self) -> Taken:
        rows, self.notable = self.notable, {}
        groups = sorted(self.dirty_groups, key=repr)
        self.dirty_groups.clear()
        for tenant, group in groups:
            rows.update(self._group_rows(tenant, group))
        changelog: list[tuple[list, list]] = []
        for tenant, event_id in sorted(self.dirty_log):
            group, alert = self._alert_of[(tenant, event_id)]
            changelog.append((["alert", tenant, event_id], list(alert)))
        for tenant, group, key in sorted(self.dirty_emitted, key=repr):
            changelog.append((["row", tenant, key], list(group)))
        token = (
            {k: v for k, v in rows.items() if k[1].startswith("event:")},
            groups,
            set(self.dirty_log),
            set(self.dirty_emitted),
        )
        self.dirty_log.clear()
        self.dirty_emitted.clear()
        return Taken(changelog=changelog, rows={TABLE: rows} if rows else {}, token=token)

    def requeue(self, taken: Taken) -> None:
        notable, groups, logged, emitted = taken.token
        for key, values in notable.items():
            self.notable.setdefault(key, values)
        self.dirty_groups.update(groups)
        self.dirty_log.update(logged)
        self.dirty_emitted.update(emitted)

    def restore(self, key: list, value: list) -> None:
        kind, tenant, ident = key
        if kind == "alert":
            self._add_alert(tenant, ident, tuple(value))  # type: ignore[arg-type]
        elif kind == "row":
            self.emitted.setdefault((tenant, tuple(value)), set()).add(ident)

    def restored(self) -> None:
        # rewrite every storm row and tombstone whatever was emitted and is no storm now
        self.dirty_groups.update(self.alerts)
        self.dirty_groups.update(self.emitted)
        self.dirty_log.clear()
        self.dirty_emitted.clear()

    def stats(self) -> dict[str, int]:
        return {"alerts": len(self.known_alerts), "alert_groups": len(self.alerts)}
