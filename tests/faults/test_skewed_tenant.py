"""Scenario 19: one tenant sends half of all emails, over 6 partitions, the worker
SIGKILLed at 30 % and 70 % of the stream and restarted with most of its state on disk.

DESIGN §2 "Partition key": every partition gets a fair share of the email traffic, the
largest tenant's included, so adding workers spreads it; DESIGN §5: every table (a lead's
emails on several partitions, active mailboxes per month, the plan carried to months whose
sends are on other partitions) still equals the reference across kill -9.
"""

from __future__ import annotations

import signal

import pytest

from tests.faults._faults import (
    PACE_S,
    SPILL,
    dead_letters,
    produce_paced,
    report,
    verify,
    wait_for,
    workload,
)

pytestmark = [pytest.mark.kafka, pytest.mark.integration, pytest.mark.faults]

TENANTS = ("agency", "t-1", "t-2", "t-3", "t-4", "t-5")


def test_a_skewed_tenant_spreads_over_every_partition_exactly_through_kill_9(
    deployment, reference_olap
):
    dep = deployment
    dep.partitions = 6
    wl = workload(seed=1414, tenants=TENANTS, heavy=0.5)
    total = len(wl.events)
    dep.prepare()
    paced = produce_paced(dep, wl.events, seconds=max(PACE_S, total / 5000))
    dep.start_worker(SPILL)
    for fraction in (0.3, 0.7):
        wait_for(lambda f=fraction: dep.committed() >= f * total, 300, f"{fraction:.0%}", dep)
        assert dep.stop_worker(signal.SIGKILL) == -signal.SIGKILL
        dep.start_worker(SPILL)
    paced.join(300)
    drained = dep.wait_drained(timeout=300)
    shares = _email_shares(dep)
    even = 1 / dep.partitions
    assert max(shares) < 1.3 * even and min(shares) > 0.7 * even, shares
    figures = verify(dep, wl, reference_olap)
    assert dead_letters(dep, expect=0, timeout=5) == []
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    report(
        "14 skewed tenant (half the emails), 6 partitions, sigkill 30/70%",
        produced=total,
        email_share_per_partition=[round(s, 3) for s in shares],
        final_drain_s=round(drained, 1),
        **figures,
    )


def _email_shares(dep) -> list[float]:
    from confluent_kafka import Consumer, TopicPartition

    from tests._sluice import _QUIET

    consumer = Consumer({"bootstrap.servers": dep.bootstrap, "group.id": "x", "logger": _QUIET})
    try:
        ends = [
            consumer.get_watermark_offsets(TopicPartition(dep.topic("email"), p), timeout=10)[1]
            for p in range(dep.partitions)
        ]
    finally:
        consumer.close()
    return [e / sum(ends) for e in ends]
