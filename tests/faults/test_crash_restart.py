"""Scenario 1 (worker SIGKILLed at 20/50/80% of the stream, restarted) and scenario 8
(10% of the events produced again at new offsets, before and after a crash).

DESIGN §5: rollups exact across kill -9, restarts and redelivery. The kill lands while
the producer is still producing and the worker holds applied-but-uncommitted events, so
each restart replays them over state restored from the changelog and over OLAP rows that
may already hold them.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.faults._faults import (
    PACE_S,
    SPILL,
    RawProducer,
    dead_letters,
    duplicates,
    produce_paced,
    report,
    spilled,
    verify,
    wait_for,
    workload,
)

pytestmark = [pytest.mark.kafka, pytest.mark.integration, pytest.mark.faults]


def test_sigkill_at_20_50_80_percent_then_restart(deployment, reference_olap):
    dep = deployment
    wl = workload(seed=101)
    total = len(wl.events)
    dep.prepare()
    producer = produce_paced(dep, wl.events, seconds=max(PACE_S, total / 5000))
    dep.start_worker(SPILL)  # most of the state on disk: the restarts rebuild it there
    kills = []
    for fraction in (0.2, 0.5, 0.8):
        wait_for(lambda f=fraction: dep.committed() >= f * total, 300, f"{fraction:.0%}", dep)
        assert dep.stop_worker(signal.SIGKILL) == -signal.SIGKILL
        at = dep.committed()
        restarted = time.monotonic()
        dep.start_worker(SPILL)
        # recovery: the restarted worker commits past the point the killed one reached
        wait_for(lambda a=at: dep.committed() > a or dep.committed() >= total, 300, "recovery", dep)
        kills.append((round(at / total, 2), round(time.monotonic() - restarted, 1)))
    producer.join(300)
    drained = dep.wait_drained(timeout=300)
    figures = verify(dep, wl, reference_olap)
    assert dead_letters(dep, expect=0, timeout=5) == []
    on_disk = spilled(dep)
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    report(
        "1 sigkill 20/50/80%",
        produced=total,
        state_entries_on_disk=on_disk,
        killed_at=[k[0] for k in kills],
        recovery_s=[k[1] for k in kills],
        final_drain_s=round(drained, 1),
        **figures,
    )


def test_duplicates_at_new_offsets_across_a_crash(deployment, reference_olap):
    dep = deployment
    wl = workload(seed=808)
    events = wl.events
    half = len(events) // 2
    dep.prepare()
    producer = RawProducer(dep)
    # first half, and 10% of it again further down the log
    producer.send_all(events[:half] + duplicates(events[:half], 0.10, seed=1))
    dep.start_worker(SPILL)  # duplicates must be recognised from state on disk too
    dep.wait_drained()
    assert dep.stop_worker(signal.SIGKILL) == -signal.SIGKILL
    # the rest, 10% of the whole stream again: the restarted worker must recognise
    # duplicates of events it applied before the crash from the changelog-restored state
    again = duplicates(events, 0.10, seed=2)
    producer.send_all(events[half:] + again)
    restarted = time.monotonic()
    dep.start_worker(SPILL)
    dep.wait_drained()
    recovery = time.monotonic() - restarted
    figures = verify(dep, wl, reference_olap)
    assert dead_letters(dep, expect=0, timeout=5) == []
    on_disk = spilled(dep)
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    report(
        "8 duplicates at new offsets",
        produced=producer.sent,
        state_entries_on_disk=on_disk,
        stream=len(events),  # the workload, with its own ~8% redeliveries
        reproduced_at_new_offsets=producer.sent - len(events),
        recovery_s=round(recovery, 1),
        **figures,
    )
