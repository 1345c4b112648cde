"""Scenario 3: the broker killed (SIGKILL) and restarted three times while the producer
and the worker run; lag returns to 0 without manual action and every row is exact.

Runs its own single-node broker (``dev.kafka``) on free ports in a temporary
directory, never the session's broker.
"""

from __future__ import annotations

import signal
import time

import pytest

from dev import kafka as devkafka
from tests._broker import free_ports, kafka_required
from tests._sluice import Deployment
from tests.faults._faults import (
    PACE_S,
    dead_letters,
    produce_paced,
    report,
    verify,
    wait_for,
    workload,
)

pytestmark = [pytest.mark.kafka, pytest.mark.integration, pytest.mark.faults]

RESTARTS = 3
DOWN_S = 3.0


@pytest.fixture
def own_broker(kafka_bootstrap, tmp_path_factory):
    """A broker this test may kill (``kafka_bootstrap`` only orders it after the
    session's broker checks, so a machine without Java skips or fails the same way)."""
    data_dir = tmp_path_factory.mktemp("own-broker")
    port, controller_port = free_ports(2)
    try:
        handle = devkafka.start(data_dir, port=port, controller_port=controller_port)
    except devkafka.DevKafkaError as exc:
        # under CI a missing broker is a failure, never a skip (tests/_broker.py)
        if kafka_required():
            pytest.fail(f"cannot start a local broker: {exc}", pytrace=False)
        pytest.skip(f"cannot start a local broker: {exc}")
    yield handle, data_dir, port, controller_port
    devkafka.stop(data_dir, timeout=30)


def test_broker_killed_and_restarted_three_times(own_broker, tmp_path, reference_olap):
    handle, data_dir, port, controller_port = own_broker
    dep = Deployment(handle.bootstrap, tmp_path)
    try:
        wl = workload(seed=303)
        total = len(wl.events)
        dep.prepare()
        producer = produce_paced(dep, wl.events, seconds=PACE_S)
        dep.start_worker()
        outages = []
        for n in range(RESTARTS):
            fraction = (n + 1) / (RESTARTS + 1)
            wait_for(lambda f=fraction: dep.committed() >= f * total, 300, f"{fraction:.0%}", dep)
            assert devkafka.kill(data_dir)
            time.sleep(DOWN_S)
            started = time.monotonic()
            devkafka.start(data_dir, port=port, controller_port=controller_port)
            outages.append(round(time.monotonic() - started + DOWN_S, 1))
        producer.join(300)
        back = time.monotonic()
        dep.wait_drained(timeout=300)  # lag 0 without any manual action
        drained = time.monotonic() - back
        figures = verify(dep, wl, reference_olap)
        assert dead_letters(dep, expect=0, timeout=5) == []
        assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
        report(
            "3 broker killed x3",
            produced=total,
            broker_outages_s=outages,
            drain_after_last_restart_s=round(drained, 1),
            **figures,
        )
    finally:
        dep.close()
