"""The fault suite's OLAP hooks (dev/faults.py): off by default, doing exactly what they say."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from dev.faults import FaultHooks, InjectedFault, installed

COLUMNS = ["tenant_id", "event_key", "kind", "occurred_at"]


def test_hooks_are_off_unless_their_variables_are_set():
    assert not FaultHooks({}).active
    assert not FaultHooks({"SLUICE_FAULT_OLAP_FAIL_UNTIL": ""}).active


@pytest.fixture
def olap(reference_olap):
    from sluice.olap import migrate

    migrate(reference_olap)
    return reference_olap


def _count(olap, key: str) -> int:
    _, rows = olap.query(f"SELECT count() FROM admin_system_events WHERE event_key = '{key}'")
    return rows[0][0]


def _batch(olap, key: str) -> dict:
    columns = [
        c for c in olap.query("SELECT * FROM admin_system_events LIMIT 0")[0] if c in COLUMNS
    ]
    row = {"tenant_id": "t", "event_key": key, "kind": "maintenance_completed"}
    row["occurred_at"] = datetime(2026, 1, 1, tzinfo=UTC)
    return {"admin_system_events": (columns, [[row[c] for c in columns]])}


def test_unavailable_fails_without_writing(olap):
    hooks = FaultHooks({FaultHooks.FAIL_UNTIL: str(time.time() + 60)})
    with installed(hooks), pytest.raises(InjectedFault):
        olap.write(_batch(olap, "hook:down"))
    assert _count(olap, "hook:down") == 0


def test_ambiguous_writes_then_reports_failure_every_nth_flush(olap):
    with installed(FaultHooks({FaultHooks.AMBIGUOUS_EVERY: "2"})):
        olap.write(_batch(olap, "hook:a1"))
        with pytest.raises(InjectedFault):
            olap.write(_batch(olap, "hook:a2"))
        assert _count(olap, "hook:a2") == 1  # written although reported as failed
        olap.write(_batch(olap, "hook:a3"))
