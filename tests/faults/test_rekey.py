"""Scenario 13: a tenant-keyed deployment moves to email keys (docs/operations.md,
"Changing a family's key"), end to end with a real broker and worker.

1. History as the release before email keys made it: a worker keyed every family by
   tenant (dev/faults.py ``SLUICE_FAULT_LEGACY_KEYS``) consumed 60 % of a workload in
   which one tenant sends half of the emails, produced keyed by tenant; then stopped.
   A few more old-keyed records arrive while no worker runs.
2. A worker of this release on that state refuses to start (its state is not where the
   new keys put it) and changes nothing.
3. ``sluice topics rekey --dry-run`` counts; ``sluice topics rekey`` moves the state and
   rewrites the rows; the views read exactly what they read before; a second run moves
   nothing.
4. The worker starts and the rest of the workload comes with the new keys — engagement for
   emails sent before the move included — plus 10 % of the old events again with their
   old key (forwarded to their email's partition). Every table equals the reference.
"""

from __future__ import annotations

import json
import random
import signal

import pytest

from sluice.olap import OLAP_TABLES
from tests._sluice import FAULTY_SLUICE
from tests.faults._faults import (
    RawProducer,
    _olap_table,
    dead_letters,
    report,
    status,
    verify,
    workload,
)
from topics.taxonomy import family_of

pytestmark = [pytest.mark.kafka, pytest.mark.integration, pytest.mark.faults]

LEGACY = {"SLUICE_FAULT_LEGACY_KEYS": "1"}
TENANTS = ("agency", "t-1", "t-2", "t-3", "t-4", "t-5")


def send_tenant_keyed(producer: RawProducer, events: list[dict]) -> None:
    """Produce as the tenant-keyed release's SDK did."""
    for event in events:
        family = family_of(event["event_type"])
        assert family is not None
        value = producer.codec.encode(family, event)
        producer.raw(producer.dep.topic(family), event["tenant_id"].encode(), value)
    producer.flush()


def analytics(dep) -> dict[str, dict]:
    return {t: _olap_table(dep, t) for t in OLAP_TABLES if OLAP_TABLES[t].sharded}


def test_tenant_keyed_history_moves_to_email_keys_exactly(deployment, reference_olap):
    dep = deployment
    wl = workload(seed=1313, tenants=TENANTS, heavy=0.5)
    events = wl.events
    cut = len(events) * 3 // 5
    dep.prepare()
    producer = RawProducer(dep)

    # 1. the tenant-keyed release consumes the first 60 %
    send_tenant_keyed(producer, events[:cut])
    dep.start_worker(LEGACY, command=FAULTY_SLUICE)
    dep.wait_drained()
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    before = analytics(dep)
    stragglers = events[cut : cut + 200]  # old producers, while no worker runs
    send_tenant_keyed(producer, stragglers)

    # 2. upgraded without the re-key: refused, nothing committed
    held = dep.committed()
    dep.start_worker()
    code = dep.worker.wait(timeout=120)  # type: ignore[union-attr]
    dep.worker = None
    assert code != 0 and "sluice topics rekey" in dep.log_tail(200), dep.log_tail()
    assert dep.committed() == held

    # 3. the re-key
    dry = dep.run("topics", "rekey", "--dry-run")
    assert "state entries would move; nothing was changed" in dry.stdout, dry.stdout
    assert analytics(dep) == before
    done = dep.run("topics", "rekey")
    moved = int(done.stdout.rsplit("moved ", 1)[1].split()[0])
    assert moved > len(wl.facts) // 4, done.stdout
    assert analytics(dep) == before  # nothing lost, nothing counted twice
    again = dep.run("topics", "rekey")
    assert "moved 0 state entries" in again.stdout, again.stdout

    # 4. new keys from now on; old-keyed records (stragglers, a replay) are forwarded
    dep.start_worker()
    rng = random.Random(13)
    replay = rng.sample(events[:cut], cut // 10)
    send_tenant_keyed(producer, replay)
    for event in events[cut + 200 :]:
        producer.send(event)
    producer.flush()
    drained = dep.wait_drained()
    forwarded = status(dep).get("forwarded", 0)
    assert forwarded >= len(stragglers) // 2, forwarded  # most changed partition
    figures = verify(dep, wl, reference_olap)
    assert dead_letters(dep, expect=0, timeout=5) == []
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    report(
        "13 re-key: tenant-keyed history, sluice topics rekey, email-keyed traffic",
        produced=len(events) + len(replay),
        history_events=cut,
        state_entries_moved=moved,
        forwarded=forwarded,
        final_drain_s=round(drained, 1),
        rekey_report=json.dumps(done.stdout.splitlines()[-1]),
        **figures,
    )
