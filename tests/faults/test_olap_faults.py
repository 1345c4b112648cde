"""Scenarios 4 and 5: ClickHouse unavailable for a while; inserts that succeed but report
an error. Faults are injected in the worker's OLAP client by its test-only hooks
(:class:`dev.faults.FaultHooks`, which run the worker through ``python -m dev.faults``).

* Unavailable: nothing lost, nothing doubled, and offsets never committed past what was
  written — the committed offsets do not move while every insert fails, not even across a
  kill -9 in the middle of the outage.
* Ambiguous: every third insert is written and then reported as failed; the checkpoint is
  retried with the current absolute values and must not double count.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from dev.faults import FaultHooks
from tests._sluice import FAULTY_SLUICE
from tests.faults._faults import (
    PACE_S,
    RawProducer,
    dead_letters,
    produce_paced,
    report,
    verify,
    wait_for,
    workload,
)

pytestmark = [pytest.mark.kafka, pytest.mark.integration, pytest.mark.faults]

# CI default; the 60 s with SLUICE_FAULT_OLAP_DOWN_S=60
DOWN_S = float(os.environ.get("SLUICE_FAULT_OLAP_DOWN_S", "20"))


def test_clickhouse_unavailable_then_back(deployment, reference_olap):
    dep = deployment
    wl = workload(seed=404)
    dep.prepare()
    producer = RawProducer(dep)
    producer.send_all(wl.events)
    total = producer.sent

    back_at = time.time() + DOWN_S
    env = {FaultHooks.FAIL_UNTIL: str(back_at)}
    dep.start_worker(env_extra=env, command=FAULTY_SLUICE)
    # the worker consumes everything it can while no insert succeeds ...
    wait_for(lambda: "checkpoint failed" in dep.log_tail(400), 60, "a failed checkpoint", dep)
    held = dep.committed()
    samples = 0
    killed = False
    while time.time() < back_at - 2:
        # ... and commits nothing past what was written
        assert dep.committed() == held, "offsets committed while ClickHouse was down"
        samples += 1
        if not killed and time.time() > back_at - DOWN_S / 2:
            # kill -9 in the middle of the outage: the restart restores and replays
            assert dep.stop_worker(signal.SIGKILL) == -signal.SIGKILL
            dep.start_worker(env_extra=env, command=FAULTY_SLUICE)
            killed = True
        time.sleep(0.5)
    assert killed and samples >= 5
    assert held < total * 0.05, (held, total)  # only row-less telemetry, if anything
    wait_for(lambda: time.time() >= back_at, DOWN_S + 5, "the end of the outage")
    recovery = dep.wait_drained()
    figures = verify(dep, wl, reference_olap)
    assert dead_letters(dep, expect=0, timeout=5) == []
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    report(
        "4 clickhouse down",
        produced=total,
        down_s=DOWN_S,
        committed_while_down=held,
        kill9_during_outage=True,
        recovery_s=round(recovery, 1),
        **figures,
    )


def test_ambiguous_insert_every_third_write(deployment, reference_olap):
    dep = deployment
    wl = workload(seed=505)
    dep.prepare()
    env = {FaultHooks.AMBIGUOUS_EVERY: "3"}
    dep.start_worker(env_extra=env, command=FAULTY_SLUICE)
    # paced, so the worker flushes many times while the stream runs
    produce_paced(dep, wl.events, seconds=PACE_S / 2).join(300)
    drained = dep.wait_drained()
    figures = verify(dep, wl, reference_olap)
    log = (dep.root / "worker.log").read_text()
    injected = log.count("injected: written, reported as failed")
    assert injected >= 2, "the fault was not injected"
    assert dead_letters(dep, expect=0, timeout=5) == []
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    report(
        "5 ambiguous insert every 3rd",
        produced=len(wl.events),
        ambiguous_failures=injected,
        drain_s=round(drained, 1),
        **figures,
    )
