"""Contract tests of the routing table (streams.routing)."""

from __future__ import annotations

import pytest

from sinks.ecs import ECS_KINDS
from sinks.pii import POSTHOG_PROPERTIES
from streams.routing import (
    AUDIT_LOG,
    DESTINATIONS,
    NEVER_AUDITED,
    OBSERVABILITY,
    POSTHOG,
    ROUTES,
    SENSITIVE_ACCESS,
    SIEM,
    SINKS,
    possible_destinations,
    route,
    sink_targets,
)
from topics.taxonomy import COMPLIANCE_ACTIONS, EVENT_TYPES, FAMILY_OF


def event(event_type: str, **fields: object) -> dict[str, object]:
    return {"event_type": event_type, "event_id": "e", "tenant_id": "t", **fields}


def test_every_taxonomy_event_type_has_a_route_and_nothing_else_does():
    assert set(ROUTES) == set(FAMILY_OF)
    for event_type, targets in ROUTES.items():
        assert targets, f"{event_type} goes nowhere"


def test_routes_name_only_known_destinations():
    for event_type, targets in ROUTES.items():
        for t in targets:
            assert t.destination in DESTINATIONS, (event_type, t.destination)


@pytest.mark.parametrize("event_type", sorted(NEVER_AUDITED))
def test_no_admin_ui_or_low_risk_admin_event_can_reach_the_audit_log(event_type):
    assert AUDIT_LOG not in possible_destinations(event_type)
    # whatever the fields say
    assert AUDIT_LOG not in route(event(event_type, sensitive=True))


def test_never_audited_covers_admin_ui_and_low_risk_actions():
    assert EVENT_TYPES["admin_ui"] <= NEVER_AUDITED
    assert {"admin_setting_toggled", "admin_record_viewed"} <= NEVER_AUDITED
    assert not NEVER_AUDITED & COMPLIANCE_ACTIONS


@pytest.mark.parametrize("event_type", sorted(COMPLIANCE_ACTIONS))
def test_every_compliance_action_is_audited_and_never_goes_to_posthog(event_type):
    assert AUDIT_LOG in possible_destinations(event_type)
    assert POSTHOG not in possible_destinations(event_type)


def test_families_go_where_design_section_2_says():
    for t in EVENT_TYPES["security"]:
        assert SIEM in route(event(t))
    for t in EVENT_TYPES["infra"]:
        assert OBSERVABILITY in route(event(t))
    for t in EVENT_TYPES["warmup"] | EVENT_TYPES["system"]:
        assert not possible_destinations(t) & SINKS, t
    for t in EVENT_TYPES["admin_ui"]:
        assert route(event(t)) == {POSTHOG}


def test_conditional_route_sensitive_access():
    assert SENSITIVE_ACCESS in route(event("security_data_access", sensitive=True))
    assert SENSITIVE_ACCESS in route(event("security_data_access", data_scope="pii"))
    assert SENSITIVE_ACCESS not in route(event("security_data_access", sensitive=False))
    assert SENSITIVE_ACCESS not in route(event("security_data_access"))
    for export in ("admin_data_export_requested", "admin_data_export_approved"):
        assert route(event(export)) == {AUDIT_LOG, SIEM, SENSITIVE_ACCESS}


def test_sensitive_access_route_agrees_with_the_record_that_implements_it():
    from streams.compliance import sensitive_kind

    for event_type in ROUTES:
        for fields in ({}, {"sensitive": True}, {"data_scope": "pii"}):
            e = event(event_type, **fields)
            assert (SENSITIVE_ACCESS in route(e)) == (sensitive_kind(e) is not None), e


def test_sink_targets_agree_with_route():
    for event_type in ROUTES:
        for fields in ({}, {"sensitive": True}):
            e = event(event_type, **fields)
            assert set(sink_targets(e)) == route(e) & SINKS


def test_every_posthog_route_has_a_property_allowlist_and_every_siem_route_an_ecs_mapping():
    for event_type in ROUTES:
        if POSTHOG in possible_destinations(event_type):
            assert event_type in POSTHOG_PROPERTIES, event_type
        if SIEM in possible_destinations(event_type):
            assert event_type in ECS_KINDS, event_type
    # and no allowlist for a type that never goes to PostHog (dead config hides mistakes)
    assert {t for t in POSTHOG_PROPERTIES if POSTHOG not in possible_destinations(t)} == set()


def test_an_unknown_event_type_has_no_route():
    with pytest.raises(KeyError):
        route(event("made_up_event"))


def test_the_audit_log_route_is_exactly_the_compliance_actions():
    # streams.compliance writes a row for COMPLIANCE_ACTIONS: the table must say the same
    assert {t for t in ROUTES if AUDIT_LOG in possible_destinations(t)} == COMPLIANCE_ACTIONS
