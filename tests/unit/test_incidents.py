"""admin_system_events: notable events once each, alert storms coalesced exactly."""

from __future__ import annotations

from streams.engine import Engine
from streams.incidents import STORM_GAP_MS, SystemEvents, severity_order
from tests._olapsim import Harness

T0 = 1_793_491_200_000
MIN = 60_000


def alert(
    n: int,
    at: int,
    *,
    key: str | None = None,
    name: str = "5xx",
    service: str = "api",
    severity: str = "warning",
    tenant: str = "t1",
) -> dict:
    return {
        "event_id": f"a{n}",
        "event_type": "infra_alert",
        "occurred_at": at,
        "tenant_id": tenant,
        "source": "alertmanager",
        "alert_name": name,
        "service": service,
        "severity": severity,
        "incident_key": key,
    }


def notable(n: int, event_type: str, tenant: str = "t1") -> dict:
    return {
        "event_id": f"s{n}",
        "event_type": event_type,
        "occurred_at": T0 + n,
        "tenant_id": tenant,
        "source": "statuspage",
        "incident_id": "INC-1",
        "title": "Delays",
        "severity": "major",
        "affected_services": ["api"],
    }


def final(events: list[dict], every: int = 1) -> dict:
    h = Harness(every=every)
    h.produce(events)
    h.run()
    return h.olap.final("admin_system_events")


COLS = Engine().columns("admin_system_events")


def col(values: tuple, name: str):
    public = [c for c in COLS if c not in ("updated", "_version", "_deleted")]
    return values[public.index(name)]


def test_keyed_alerts_are_one_incident_however_spread_out():
    events = [
        alert(n, T0 + n * 50 * MIN, key="inc-1", severity=s)
        for n, s in enumerate(["info", "critical", "warning", "info"])
    ]
    rows = final(events + events[:2])  # redelivered alerts change nothing
    ((key, values),) = rows.items()
    assert key == ("t1", "incident:inc-1")
    assert col(values, "alert_count") == 4
    assert col(values, "severity") == "critical"
    assert (col(values, "last_seen") - col(values, "first_seen")).total_seconds() == 150 * 60


def test_unkeyed_alerts_split_on_the_gap_and_merge_when_the_middle_arrives_late():
    early = [alert(n, T0 + n * 20 * MIN) for n in range(3)]  # 0, 20, 40 min
    late_storm = [alert(10 + n, T0 + 80 * MIN + n * 10 * MIN) for n in range(2)]  # 80, 90
    bridge = alert(99, T0 + 60 * MIN)  # closes the 40-minute lull
    h = Harness(every=1)
    h.produce(early + late_storm)
    h.run()
    assert sorted(col(v, "alert_count") for v in h.olap.final("admin_system_events").values()) == [
        2,
        3,
    ]
    h.produce([bridge])
    h.run()
    rows = h.olap.final("admin_system_events")
    (values,) = rows.values()
    assert col(values, "alert_count") == 6
    tombstones = [r for r in h.olap.tables["admin_system_events"].values() if r["_deleted"]]
    assert len(tombstones) == 1  # the second storm's row, superseded


def test_tombstones_survive_a_crash_between_changelog_and_olap():
    """The emitted row keys are in the changelog, so a restore still supersedes them."""
    h = Harness(every=1)
    h.produce([alert(0, T0), alert(1, T0 + 2 * STORM_GAP_MS)])
    h.run()
    assert len(h.olap.final("admin_system_events")) == 2
    h.produce([alert(2, T0 + STORM_GAP_MS)])  # merges both
    h.run(checkpoint=False)
    h.checkpoint(olap_fails=True)
    h.crash()
    h.run()
    (values,) = h.olap.final("admin_system_events").values()
    assert col(values, "alert_count") == 3


def test_notable_events_are_one_row_each_and_telemetry_is_none():
    events = [
        notable(1, "system_incident_opened"),
        notable(2, "system_incident_resolved"),
        notable(3, "system_maintenance_completed"),
    ]
    telemetry = [
        {**alert(7, T0), "event_type": t}
        for t in (
            "infra_latency",
            "infra_connection_pool_metrics",
            "query_executed",
            "infra_health_check",
            "infra_autoscaling",
            "infra_error_rate",
        )
    ]
    rows = final(events + telemetry + events)
    assert sorted(rows) == [("t1", "event:s1"), ("t1", "event:s2"), ("t1", "event:s3")]
    assert {col(v, "kind") for v in rows.values()} == {
        "incident_opened",
        "incident_resolved",
        "maintenance_completed",
    }
    assert col(rows[("t1", "event:s1")], "affected_services") == ["api"]


def test_tenants_never_share_incidents():
    rows = final([alert(1, T0, key="k", tenant="a"), alert(2, T0, key="k", tenant="b")])
    assert sorted(rows) == [("a", "incident:k"), ("b", "incident:k")]


def test_severity_order():
    assert max(["warning", "critical", "info"], key=severity_order) == "critical"
    assert max(["bogus", "info"], key=severity_order) == "info"
    assert max([None, "minor"], key=severity_order) == "minor"


def test_component_requeues_what_a_failed_checkpoint_carried():
    comp = SystemEvents()
    comp.apply(notable(1, "system_incident_opened"))
    comp.apply(alert(1, T0))
    taken = comp.take()
    assert comp.take().empty()
    comp.requeue(taken)
    again = comp.take()
    assert set(again.rows["admin_system_events"]) == set(taken.rows["admin_system_events"])
    assert again.changelog == taken.changelog
