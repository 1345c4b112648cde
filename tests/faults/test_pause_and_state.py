"""Scenario 2 (worker frozen with SIGSTOP past its session timeout, then SIGCONT),
scenario 11 (the local state directory deleted between runs: state comes back from the
changelog) and scenario 12 (50 tenants whose ids collide, with ``:`` in them).
"""

from __future__ import annotations

import shutil
import signal
import time

import pytest

from dev.workload import MixedWorkload
from tests.faults._faults import (
    EVENTS,
    PACE_S,
    RawProducer,
    dead_letters,
    duplicates,
    produce_paced,
    report,
    verify,
    wait_for,
    workload,
)

pytestmark = [pytest.mark.kafka, pytest.mark.integration, pytest.mark.faults]


def test_sigstop_past_the_session_timeout_then_sigcont(deployment, reference_olap):
    dep = deployment
    wl = workload(seed=202)
    total = len(wl.events)
    dep.prepare()
    producer = produce_paced(dep, wl.events, seconds=PACE_S / 2)
    dep.start_worker()
    wait_for(lambda: dep.committed() >= 0.3 * total, 120, "30%", dep)
    assert dep.worker is not None
    dep.worker.send_signal(signal.SIGSTOP)
    frozen = dep.session_timeout_s + 4  # the group gives its partitions up meanwhile
    time.sleep(frozen)
    held = dep.committed()
    dep.worker.send_signal(signal.SIGCONT)
    resumed = time.monotonic()
    wait_for(lambda: dep.committed() > held, 120, "progress after SIGCONT", dep)
    recovery = time.monotonic() - resumed
    producer.join(300)
    dep.wait_drained()
    figures = verify(dep, wl, reference_olap)
    assert dead_letters(dep, expect=0, timeout=5) == []
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    report(
        "2 sigstop past session timeout",
        produced=total,
        frozen_s=frozen,
        session_timeout_s=dep.session_timeout_s,
        recovery_s=round(recovery, 1),
        **figures,
    )


def test_local_state_deleted_between_runs(deployment, reference_olap):
    dep = deployment
    wl = workload(seed=1111)
    events = wl.events
    half = len(events) // 2
    dep.prepare()
    producer = RawProducer(dep)
    producer.send_all(events[:half])
    dep.start_worker()
    dep.wait_drained()
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    state_dir = dep.root / "var"
    assert state_dir.is_dir()
    shutil.rmtree(state_dir)  # the worker's local state (Faust's data and table dirs)
    # the rest, plus a fifth of the first half again: only restored state can tell
    # those are duplicates (and complete emails whose send came in the first half)
    producer.send_all(events[half:] + duplicates(events[:half], 0.2, seed=11))
    restarted = time.monotonic()
    dep.start_worker()
    dep.wait_drained()
    recovery = time.monotonic() - restarted
    figures = verify(dep, wl, reference_olap)
    log = (dep.root / "worker.log").read_text()
    assert "from the changelog" in log
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    report(
        "11 local state deleted",
        produced=producer.sent,
        recovery_s=round(recovery, 1),
        **figures,
    )


def colliding(wl: MixedWorkload) -> MixedWorkload:
    """Make ids collide across tenants under any naive ``tenant:id`` concatenation.

    Tenant ``tN`` gets campaign ``x:cmp-1`` where tenant ``tN:x`` has ``cmp-1``; mailbox
    and lead ids likewise; so "tN" + ":" + "x:cmp-1" == "tN:x" + ":" + "cmp-1".
    """

    def rename(tenant: str, value: str | None) -> str | None:
        if value is None or tenant.endswith(":x"):
            return value
        return f"x:{value}"

    for event in wl.events:
        tenant = event["tenant_id"]
        for field in ("campaign_id", "mailbox_id", "lead_id", "sequence_step_id"):
            if event.get(field) is not None:
                event[field] = rename(tenant, event[field])
    for fact in wl.facts:
        fact.campaign_id = rename(fact.tenant_id, fact.campaign_id)
        fact.mailbox_id = rename(fact.tenant_id, fact.mailbox_id)
        fact.lead_id = rename(fact.tenant_id, fact.lead_id)
        fact.sequence_step_id = rename(fact.tenant_id, fact.sequence_step_id)
    for warmup in wl.warmups:
        warmup.mailbox_id = rename(warmup.tenant_id, warmup.mailbox_id)
    return wl


def test_fifty_tenants_with_colliding_ids(deployment, reference_olap):
    dep = deployment
    tenants = tuple(t for n in range(25) for t in (f"t{n}", f"t{n}:x"))
    wl = colliding(workload(seed=1212, events=EVENTS, tenants=tenants))
    dep.prepare()
    producer = RawProducer(dep)
    half = len(wl.events) // 2
    producer.send_all(wl.events[:half])
    dep.start_worker()
    dep.wait_drained()
    assert dep.stop_worker(signal.SIGKILL) == -signal.SIGKILL
    producer.send_all(wl.events[half:])
    dep.start_worker()
    drained = dep.wait_drained()
    figures = verify(dep, wl, reference_olap)
    rows = dep.query(
        "SELECT count() AS n, uniqExact(company_id) AS tenants FROM campaign_analytics_v"
    )
    assert rows[0]["tenants"] == len(tenants)
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    report(
        "12 50 tenants colliding ids",
        produced=producer.sent,
        tenants=len(tenants),
        drain_s=round(drained, 1),
        **figures,
    )
